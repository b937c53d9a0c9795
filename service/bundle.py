"""The serving bundle: its format (file names, graph names, manifest keys) and its reader.

``docs/bundle-format.md`` is the contract; this module is its executable half. The writer in
``export/`` imports the constants from here, never the reverse, so the format is defined
once and the serving side needs no torch: only json, hashlib and numpy at import time, and
tokenizers, faiss and onnxruntime inside the methods that use them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from protolm.errors import BundleError, ConfigError
from service.preprocess import pad_batch

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
PROTOTYPE_INDEX_FILE = "prototypes.faiss"
EXAMPLE_INDEX_FILE = "examples.faiss"
EXAMPLES_FILE = "examples.jsonl"
EXAMPLE_OFFSETS_FILE = "examples.offsets.npy"
EXEMPLARS_FILE = "exemplars.json"

VARIANT_FILES = {
    "fp32": "model.onnx",
    "optimized": "model.optimized.onnx",
    "int8": "model.int8.onnx",
    "fp16": "model.fp16.onnx",
}
VARIANT_DEVICES = {"fp32": "any", "optimized": "any", "int8": "cpu", "fp16": "gpu"}
VARIANT_PREFERENCE = {"gpu": ("fp16", "optimized", "fp32"), "cpu": ("int8", "optimized", "fp32")}

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("logits", "probabilities", "token_attention", "prototype_similarities", "pooled")
INDEX_METRICS = ("l2", "cosine")

MANIFEST_CHECKSUM_KEY = "manifest_sha256"
_CHECKSUM_PLACEHOLDER = "0" * 64
_CHECKSUM_PATTERN = re.compile(rb'"' + MANIFEST_CHECKSUM_KEY.encode() + rb'": "([0-9a-f]{64})"')
REQUIRED_KEYS = {
    "": ("format_version", "model", "labels", "task_type", "max_length", "encoder", "architecture", "graph",
         "variants", "indexes", "files", "versions"),
    "model": ("name", "version"),
    "architecture": ("similarity", "num_prototypes", "hidden_size", "uses_token_type_ids", "prototype_class"),
    "graph": ("opset", "inputs", "outputs"),
    "indexes": ("prototypes", "examples"),
}
_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_bytes(manifest: dict) -> bytes:
    """The manifest as written: JSON whose ``manifest_sha256`` is the sha256 of these very
    bytes with that value zeroed, so a change to any byte of the file is detected."""
    body = {key: value for key, value in manifest.items() if key != MANIFEST_CHECKSUM_KEY}
    text = json.dumps({MANIFEST_CHECKSUM_KEY: _CHECKSUM_PLACEHOLDER, **body}, indent=2, ensure_ascii=False) + "\n"
    raw = text.encode("utf-8")
    return raw.replace(_CHECKSUM_PLACEHOLDER.encode(), hashlib.sha256(raw).hexdigest().encode(), 1)


def _read_manifest(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{MANIFEST_FILE}: missing; {path.parent} is not a serving bundle") from None
    return parse_manifest(raw)


def parse_manifest(raw: bytes) -> dict:
    """The manifest from the bytes :func:`manifest_bytes` wrote, after checking its checksum."""
    match = _CHECKSUM_PATTERN.search(raw)
    if match is None:
        raise BundleError(f"{MANIFEST_FILE}: no {MANIFEST_CHECKSUM_KEY}; the file is corrupt or not a bundle manifest")
    zeroed = raw[: match.start(1)] + _CHECKSUM_PLACEHOLDER.encode() + raw[match.end(1) :]
    if hashlib.sha256(zeroed).hexdigest() != match.group(1).decode():
        raise BundleError(f"{MANIFEST_FILE}: checksum mismatch; the file was changed after export")
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise BundleError(f"{MANIFEST_FILE}: not JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST_FILE}: expected a JSON object")
    return manifest


def _check_keys(manifest: dict) -> None:
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{MANIFEST_FILE}: bundle format version {manifest.get('format_version')!r}; this service reads {FORMAT_VERSION}"
        )
    for section, keys in REQUIRED_KEYS.items():
        values = manifest[section] if section else manifest
        if not isinstance(values, dict):
            raise BundleError(f"{MANIFEST_FILE}: {section!r} must be an object")
        for key in keys:
            if key not in values:
                raise BundleError(f"{MANIFEST_FILE}: missing key {f'{section}.{key}' if section else key!r}")


def _referenced_files(manifest: dict) -> list[str]:
    files = [TOKENIZER_FILE, EXEMPLARS_FILE, EXAMPLES_FILE, EXAMPLE_OFFSETS_FILE]
    files += [variant["file"] for variant in manifest["variants"]]
    files += [index["file"] for index in manifest["indexes"].values()]
    return files


def _check_files(directory: Path, manifest: dict, verify_checksums: bool) -> None:
    listed = manifest["files"]
    for name in _referenced_files(manifest):
        if name not in listed:
            raise BundleError(f"{name}: referred to by the manifest but not listed in its files")
    for name, entry in listed.items():
        if Path(name).name != name or name == MANIFEST_FILE:
            raise BundleError(f"{name}: not a plain file name of the bundle")
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{name}: missing")
        if path.stat().st_size != entry["size"]:
            raise BundleError(f"{name}: {path.stat().st_size} bytes, the manifest says {entry['size']}")
        if verify_checksums and sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{name}: sha256 mismatch; the file is corrupt or was changed after export")


def configure_tokenizer(tokenizer, max_length: int):
    """Truncation to ``max_length`` (longest_first for pairs, as the trainer's tokeniser) and
    no padding: the batch pads to its own longest input."""
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    tokenizer.no_padding()
    return tokenizer


def encode_batch(tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The graph's inputs for a batch, padded to its longest member (as the service pads)."""
    items = list(zip(texts, text_pairs)) if text_pairs is not None else list(texts)
    arrays = pad_batch(tokenizer.encode_batch(items))
    return {name: arrays[name] for name in input_names}


@dataclass(frozen=True)
class Variant:
    name: str
    file: str
    device: str  # "any", "cpu" or "gpu"
    accuracy: float | None
    agreement: float | None  # share of validation predictions equal to the PyTorch model's
    servable: bool


@dataclass(frozen=True)
class IndexInfo:
    file: str
    kind: str  # "flat", "ivf" or "hnsw"
    metric: str  # "l2" (squared distances) or "cosine" (inner products of unit vectors)
    count: int
    recall_at_10: float | None = None


class ExampleStore:
    """Rows of ``examples.jsonl`` by id, each read with one positioned read.

    The offsets are memory-mapped and rows are read with ``os.pread``, which takes no file
    position, so threads can share one store and nothing is loaded up front.
    """

    def __init__(self, rows_path: str | Path, offsets_path: str | Path):
        self._fd = -1
        self.offsets = np.load(offsets_path, mmap_mode="r")
        self._fd = os.open(rows_path, os.O_RDONLY)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, example_id: int) -> dict:
        if not 0 <= example_id < len(self):
            raise KeyError(example_id)
        start, end = int(self.offsets[example_id]), int(self.offsets[example_id + 1])
        return json.loads(os.pread(self._fd, end - start, start))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


class Bundle:
    """A validated serving bundle. ``Bundle.load`` checks it; the accessors open its parts."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.variants = [Variant(**{k: v[k] for k in Variant.__dataclass_fields__}) for v in manifest["variants"]]
        self.indexes = {
            name: IndexInfo(**{k: v.get(k) for k in IndexInfo.__dataclass_fields__})
            for name, v in manifest["indexes"].items()
        }

    @classmethod
    def load(cls, path: str | Path, verify_checksums: bool = True) -> "Bundle":
        """Read and validate; raises :class:`BundleError` naming the first bad file."""
        directory = Path(path)
        if not directory.is_dir():
            raise BundleError(f"{directory}: no such bundle directory")
        manifest = _read_manifest(directory / MANIFEST_FILE)
        try:
            _check_keys(manifest)
            bundle = cls(directory, manifest)
            _check_files(directory, manifest, verify_checksums)
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{MANIFEST_FILE}: malformed ({type(exc).__name__}: {exc})") from exc
        return bundle

    # -- what the manifest says

    @property
    def name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def version(self) -> str:
        return self.manifest["model"]["version"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def is_pair(self) -> bool:
        return self.manifest["task_type"] == "pair"

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def input_names(self) -> list[str]:
        return list(self.manifest["graph"]["inputs"])

    @property
    def prototype_class(self) -> np.ndarray:
        return np.asarray(self.manifest["architecture"]["prototype_class"], dtype=np.int64)

    def file(self, name: str) -> Path:
        return self.path / name

    # -- the parts

    def tokenizer(self):
        """A ``tokenizers.Tokenizer`` that tokenises exactly as the model was trained."""
        from tokenizers import Tokenizer

        return configure_tokenizer(Tokenizer.from_file(str(self.file(TOKENIZER_FILE))), self.max_length)

    @functools.cached_property
    def _tokenizer(self):
        return self.tokenizer()

    def encode(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The graph's inputs for ``texts`` (and ``text_pairs``), padded to the longest."""
        if (text_pairs is not None) != self.is_pair:
            raise ConfigError(f"this bundle classifies {'text pairs' if self.is_pair else 'single texts'}")
        return encode_batch(self._tokenizer, texts, text_pairs, self.input_names)

    def choose_variant(self, device: str = "cpu", preferred: str | None = None) -> Variant:
        """``preferred`` if given (it must be present, servable and fit the device), else the
        first servable variant in the device's order of preference."""
        if device not in VARIANT_PREFERENCE:
            raise ConfigError(f"device must be one of {', '.join(VARIANT_PREFERENCE)}, got {device!r}")
        by_name = {v.name: v for v in self.variants}
        if preferred is not None:
            variant = by_name.get(preferred)
            if variant is None:
                raise ConfigError(f"variant {preferred!r} is not in this bundle; it has {', '.join(by_name)}")
            if not variant.servable:
                raise ConfigError(f"variant {preferred!r} is not servable: its predictions agree with the PyTorch model's on {variant.agreement:.2%} of the validation set")
            if variant.device not in ("any", device):
                raise ConfigError(f"variant {preferred!r} is built for the {variant.device}, not the {device}")
            return variant
        for name in VARIANT_PREFERENCE[device]:
            if name in by_name and by_name[name].servable:
                return by_name[name]
        raise BundleError(f"{MANIFEST_FILE}: no servable variant for the {device}")

    def session(self, variant: Variant, providers: Sequence[str] = ("CPUExecutionProvider",), options=None):
        """An ONNX Runtime session over ``variant``'s graph."""
        import onnxruntime

        try:
            return onnxruntime.InferenceSession(str(self.file(variant.file)), sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
            raise BundleError(f"{variant.file}: ONNX Runtime cannot load it ({exc})") from exc

    def _read_index(self, info: IndexInfo):
        import faiss

        try:
            index = faiss.read_index(str(self.file(info.file)))
        except RuntimeError as exc:
            raise BundleError(f"{info.file}: FAISS cannot read it ({exc})") from exc
        if index.ntotal != info.count or index.d != self.manifest["architecture"]["hidden_size"]:
            raise BundleError(f"{info.file}: {index.ntotal} vectors of size {index.d}, the manifest says {info.count}")
        return index

    def prototype_index(self):
        """FAISS index over the prototype vectors; id = prototype number."""
        return self._read_index(self.indexes["prototypes"])

    def example_index(self):
        """FAISS index over the training examples' pooled encodings; id = row of the example store."""
        return self._read_index(self.indexes["examples"])

    def examples(self) -> ExampleStore:
        store = ExampleStore(self.file(EXAMPLES_FILE), self.file(EXAMPLE_OFFSETS_FILE))
        if len(store) != self.indexes["examples"].count:
            raise BundleError(f"{EXAMPLE_OFFSETS_FILE}: {len(store)} rows, the example index has {self.indexes['examples'].count}")
        return store

    @functools.cached_property
    def exemplars(self) -> list[dict]:
        """Per prototype, the training example it was projected onto (see the format doc)."""
        try:
            exemplars = json.loads(self.file(EXEMPLARS_FILE).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BundleError(f"{EXEMPLARS_FILE}: not JSON ({exc})") from exc
        if len(exemplars) != self.manifest["architecture"]["num_prototypes"]:
            raise BundleError(f"{EXEMPLARS_FILE}: {len(exemplars)} exemplars for {self.manifest['architecture']['num_prototypes']} prototypes")
        return exemplars

    def smoke_test(self, providers: Sequence[str] = ("CPUExecutionProvider",)) -> list[str]:
        """Run every variant on a small batch and query every index; one line per check.

        Raises :class:`BundleError` naming the file whose check failed.
        """
        texts = ["a smoke test of the serving bundle", "short"]
        feeds = self.encode(texts, texts[::-1] if self.is_pair else None)
        batch, length = feeds["input_ids"].shape
        architecture = self.manifest["architecture"]
        shapes = {
            "logits": (batch, len(self.labels)),
            "probabilities": (batch, len(self.labels)),
            "token_attention": (batch, length),
            "prototype_similarities": (batch, architecture["num_prototypes"]),
            "pooled": (batch, architecture["hidden_size"]),
        }
        report = []
        pooled = None
        for variant in self.variants:
            session = self.session(variant, providers)
            names = [i.name for i in session.get_inputs()]
            if names != self.input_names:
                raise BundleError(f"{variant.file}: inputs {names}, the manifest says {self.input_names}")
            outputs = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feeds)))
            for name, shape in shapes.items():
                value = outputs[name]
                if value.shape != shape or not np.isfinite(value).all():
                    raise BundleError(f"{variant.file}: output {name} has shape {value.shape} (expected {shape}) or non-finite values")
            if not np.allclose(outputs["probabilities"].sum(1), 1.0, atol=1e-3):
                raise BundleError(f"{variant.file}: probabilities do not sum to 1")
            pooled = outputs["pooled"] if pooled is None else pooled
            report.append(f"{variant.file}: ran a {batch}x{length} batch on {session.get_providers()[0]} (servable: {variant.servable})")
        queries = np.ascontiguousarray(pooled, dtype=np.float32)
        for name, index in (("prototypes", self.prototype_index()), ("examples", self.example_index())):
            _, ids = index.search(queries, min(5, index.ntotal))
            if (ids < 0).any():
                raise BundleError(f"{self.indexes[name].file}: search returned fewer than {min(5, index.ntotal)} neighbours")
            report.append(f"{self.indexes[name].file}: {index.ntotal} vectors, {self.indexes[name].kind} search ok")
        store = self.examples()
        for example_id in (0, len(store) - 1):
            row = store[example_id]
            if row.get("id") != example_id:
                raise BundleError(f"{EXAMPLES_FILE}: row {example_id} holds id {row.get('id')!r}")
        report.append(f"{EXAMPLES_FILE}: {len(store)} rows readable by id")
        report.append(f"{EXEMPLARS_FILE}: {len(self.exemplars)} exemplars")
        return report

