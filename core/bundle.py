"""The serving bundle's contract: its files, its manifest, exemplars and examples, typed.

``docs/bundle-format.md`` describes the format; this module is its executable half. The
export writes and the service reads every file through the functions here, so the format is
defined once, as frozen dataclasses, and neither side builds or reads it by string key.
Standard library and numpy only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from core.errors import BundleError, ConfigError
from core.highlights import Highlight
from core.similarity import Metric, metric_for

FORMAT_VERSION = 3
# 1: exemplars.json was a bare list. Version 2 wraps it as {"source", "exemplars"}, the shape
# of the model directory's exemplars.json, so one reader serves both. Version 3 adds
# last_layer.npy, the weights that turn similarities into logits (the evidence of Explain).
READABLE_FORMAT_VERSIONS = (1, 2, 3)
LAST_LAYER_SINCE = 3

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
PROTOTYPE_INDEX_FILE = "prototypes.faiss"
EXAMPLE_INDEX_FILE = "examples.faiss"
EXAMPLES_FILE = "examples.jsonl"
EXAMPLE_OFFSETS_FILE = "examples.offsets.npy"
EXEMPLARS_FILE = "exemplars.json"
LAST_LAYER_FILE = "last_layer.npy"

VARIANT_FILES = {
    "fp32": "model.onnx",
    "optimized": "model.optimized.onnx",
    "int8": "model.int8.onnx",
    "fp16": "model.fp16.onnx",
}
# Variants whose weights are the model's own: their encodings match PyTorch to float error.
FULL_PRECISION_VARIANTS = ("fp32", "optimized")
VARIANT_DEVICES = {"fp32": "any", "optimized": "any", "int8": "cpu", "fp16": "gpu"}
VARIANT_PREFERENCE = {"gpu": ("fp16", "optimized", "fp32"), "cpu": ("int8", "optimized", "fp32")}
GRAPH_OUTPUTS = ("logits", "probabilities", "token_attention", "prototype_similarities", "pooled")

MANIFEST_CHECKSUM_KEY = "manifest_sha256"
_CHECKSUM_PLACEHOLDER = "0" * 64
_CHECKSUM_PATTERN = re.compile(rb'"' + MANIFEST_CHECKSUM_KEY.encode() + rb'": "([0-9a-f]{64})"')
_HASH_CHUNK = 1 << 20


def _typed(cls, value: Any, where: str):
    """``cls`` from a JSON object; a missing required key or a wrong shape names its place."""
    if not isinstance(value, Mapping):
        raise BundleError(f"{where}: expected an object, got {type(value).__name__}")
    values = {}
    for item in dataclasses.fields(cls):
        if item.name in value:
            values[item.name] = value[item.name]
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise BundleError(f"{where}: missing key {item.name!r}")
    return cls(**values)


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    created: str | None = None


@dataclass(frozen=True)
class Architecture:
    similarity: str
    num_prototypes: int
    hidden_size: int
    uses_token_type_ids: bool
    prototype_class: tuple[int, ...]  # class of every prototype
    epsilon: float | None = None
    prototypes_per_class: int | None = None
    # ProtoPNet push: every prototype is its exemplar's encoding (bundle verify checks it).
    prototypes_pushed: bool = False

    @property
    def metric(self) -> Metric:
        return metric_for(self.similarity)


@dataclass(frozen=True)
class GraphSpec:
    opset: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Variant:
    name: str
    file: str
    device: str  # "any", "cpu" or "gpu"
    accuracy: float | None
    agreement: float | None  # share of validation predictions equal to the PyTorch model's
    servable: bool
    measured_on: str | None = None  # execution provider of the measurement
    # PyTorch's validation accuracy minus this variant's (a share, like accuracy; negative: it gained)
    accuracy_drop: float | None = None
    # Of the validation set's explanations, the mean share of the top-5 tokens by token
    # attention and of the top-3 prototypes by similarity that this variant keeps, against fp32.
    token_overlap: float | None = None
    prototype_overlap: float | None = None
    recipe: str | None = None  # how the graph was derived from model.onnx


@dataclass(frozen=True)
class IndexInfo:
    file: str
    kind: str  # "flat", "ivf" or "hnsw"
    metric: str  # Metric.index_metric of the model's similarity
    count: int
    recall_at_10: float | None = None
    lists: int | None = None  # ivf
    nprobe: int | None = None  # ivf
    m: int | None = None  # hnsw
    ef_search: int | None = None  # hnsw


@dataclass(frozen=True)
class Indexes:
    prototypes: IndexInfo
    examples: IndexInfo


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model: ModelIdentity
    labels: tuple[str, ...]
    task_type: str  # "single" or "pair"
    max_length: int
    encoder: str
    architecture: Architecture
    graph: GraphSpec
    variants: tuple[Variant, ...]
    indexes: Indexes
    files: dict[str, FileEntry] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    # Provenance, shown as it was recorded: the training options, data summaries and metrics.
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    validation_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def is_pair(self) -> bool:
        return self.task_type == "pair"

    @property
    def metric(self) -> Metric:
        return self.architecture.metric

    def numeric_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    @property
    def has_last_layer(self) -> bool:
        return self.format_version >= LAST_LAYER_SINCE

    def referenced_files(self) -> list[str]:
        files = [TOKENIZER_FILE, EXEMPLARS_FILE, EXAMPLES_FILE, EXAMPLE_OFFSETS_FILE, *(v.file for v in self.variants),
                 self.indexes.prototypes.file, self.indexes.examples.file]
        return files + [LAST_LAYER_FILE] if self.has_last_layer else files

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: Any) -> "Manifest":
        where = MANIFEST_FILE
        if not isinstance(value, Mapping):
            raise BundleError(f"{where}: expected a JSON object")
        version = value.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise BundleError(
                f"{where}: bundle format version {version!r}; this protolm reads versions "
                f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}: export the model again with this protolm"
            )
        raw = _typed(cls, value, where)
        try:
            architecture = _typed(Architecture, raw.architecture, f"{where}: architecture")
            architecture = dataclasses.replace(architecture, prototype_class=tuple(int(c) for c in architecture.prototype_class))
            graph = _typed(GraphSpec, raw.graph, f"{where}: graph")
            indexes = _typed(Indexes, raw.indexes, f"{where}: indexes")
            manifest = dataclasses.replace(
                raw,
                model=_typed(ModelIdentity, raw.model, f"{where}: model"),
                labels=tuple(raw.labels),
                architecture=architecture,
                graph=GraphSpec(int(graph.opset), tuple(graph.inputs), tuple(graph.outputs)),
                variants=tuple(_typed(Variant, v, f"{where}: variants[{i}]") for i, v in enumerate(raw.variants)),
                indexes=Indexes(
                    _typed(IndexInfo, indexes.prototypes, f"{where}: indexes.prototypes"),
                    _typed(IndexInfo, indexes.examples, f"{where}: indexes.examples"),
                ),
                files={name: _typed(FileEntry, entry, f"{where}: files.{name}") for name, entry in raw.files.items()},
            )
        except (TypeError, AttributeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed ({exc})") from exc
        if manifest.task_type not in ("single", "pair"):
            raise BundleError(f"{where}: task_type {manifest.task_type!r} is neither 'single' nor 'pair'")
        if len(architecture.prototype_class) != architecture.num_prototypes:
            raise BundleError(f"{where}: {len(architecture.prototype_class)} prototype classes for {architecture.num_prototypes} prototypes")
        try:
            metric = architecture.metric
        except ConfigError as exc:
            raise BundleError(f"{where}: {exc}") from None
        for name, info in (("prototypes", manifest.indexes.prototypes), ("examples", manifest.indexes.examples)):
            if info.metric != metric.index_metric:
                raise BundleError(f"{where}: the {name} index uses {info.metric!r}, the {metric.similarity} similarity needs {metric.index_metric!r}")
        return manifest


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sealed_json(body: Mapping[str, Any]) -> bytes:
    """JSON whose leading ``manifest_sha256`` is the sha256 of these very bytes with that
    value zeroed, so a change to any byte of the file is detected."""
    text = json.dumps({MANIFEST_CHECKSUM_KEY: _CHECKSUM_PLACEHOLDER, **body}, indent=2, ensure_ascii=False) + "\n"
    raw = text.encode("utf-8")
    return raw.replace(_CHECKSUM_PLACEHOLDER.encode(), hashlib.sha256(raw).hexdigest().encode(), 1)


def manifest_bytes(manifest: Manifest) -> bytes:
    """The manifest as written."""
    return sealed_json(manifest.to_dict())


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest from the bytes :func:`manifest_bytes` wrote, after checking its checksum."""
    match = _CHECKSUM_PATTERN.search(raw)
    if match is None:
        raise BundleError(f"{MANIFEST_FILE}: no {MANIFEST_CHECKSUM_KEY}; the file is corrupt or not a bundle manifest")
    zeroed = raw[: match.start(1)] + _CHECKSUM_PLACEHOLDER.encode() + raw[match.end(1) :]
    if hashlib.sha256(zeroed).hexdigest() != match.group(1).decode():
        raise BundleError(f"{MANIFEST_FILE}: checksum mismatch; the file was changed after export")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise BundleError(f"{MANIFEST_FILE}: not JSON ({exc})") from exc
    if isinstance(value, dict):
        value.pop(MANIFEST_CHECKSUM_KEY, None)
    return Manifest.from_dict(value)


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Seal ``manifest`` with the size and sha256 of every other file in ``directory`` and write it."""
    files = {
        path.name: FileEntry(size=path.stat().st_size, sha256=sha256_file(path))
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST_FILE
    }
    path = directory / MANIFEST_FILE
    path.write_bytes(manifest_bytes(dataclasses.replace(manifest, files=files)))
    return path


def _check_files(directory: Path, manifest: Manifest, verify_checksums: bool) -> None:
    for name in manifest.referenced_files():
        if name not in manifest.files:
            raise BundleError(f"{name}: referred to by the manifest but not listed in its files")
    for name, entry in manifest.files.items():
        if Path(name).name != name or name == MANIFEST_FILE:
            raise BundleError(f"{name}: not a plain file name of the bundle")
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{name}: missing")
        if path.stat().st_size != entry.size:
            raise BundleError(f"{name}: {path.stat().st_size} bytes, the manifest says {entry.size}")
        if verify_checksums and sha256_file(path) != entry.sha256:
            raise BundleError(f"{name}: sha256 mismatch; the file is corrupt or was changed after export")


def read_manifest(directory: str | Path, verify_checksums: bool = True) -> Manifest:
    """The manifest of the bundle in ``directory`` once every file it lists checks out;
    raises :class:`BundleError` naming the first bad file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such bundle directory")
    try:
        raw = (directory / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{MANIFEST_FILE}: missing; {directory} is not a serving bundle") from None
    manifest = parse_manifest(raw)
    _check_files(directory, manifest, verify_checksums)
    return manifest


# -- the last layer: logits = last_layer @ similarities, no bias


def write_last_layer(directory: Path, weights: np.ndarray) -> Path:
    path = directory / LAST_LAYER_FILE
    np.save(path, np.asarray(weights, dtype=np.float32))
    return path


def read_last_layer(directory: Path, manifest: Manifest) -> np.ndarray | None:
    """[classes, prototypes] float32, or None for a bundle older than format 3."""
    if not manifest.has_last_layer:
        return None
    weights = np.load(Path(directory) / LAST_LAYER_FILE)
    expected = (len(manifest.labels), manifest.architecture.num_prototypes)
    if weights.shape != expected:
        raise BundleError(f"{LAST_LAYER_FILE}: shape {weights.shape}, the manifest says {expected}")
    return weights


# -- exemplars: every prototype's projected training example (bundle and model directory alike)


@dataclass(frozen=True)
class Exemplar:
    prototype: int
    prototype_class: int
    example_id: int  # row in the training split the model was trained on; id in examples.jsonl
    text: str
    text_pair: str | None
    label: int
    distance: float  # prototype to its exemplar's encoding, in the model's metric
    words: tuple[Highlight, ...]  # the exemplar's own attention, merged to words


def write_exemplars(path: Path, exemplars: Iterable[Exemplar], source: str) -> Path:
    payload = {"source": source, "exemplars": [dataclasses.asdict(e) for e in exemplars]}
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def read_exemplars(path: Path) -> tuple[Exemplar, ...]:
    """Exemplars as :func:`write_exemplars` wrote them, or in the earlier shapes: a bare list
    (bundle format 1) and ``example_index`` for ``example_id`` (model directories before it)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BundleError(f"{path.name}: not JSON ({exc})") from exc
    items = payload if isinstance(payload, list) else payload.get("exemplars") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise BundleError(f"{path.name}: expected a list of exemplars")
    exemplars = []
    for position, item in enumerate(items):
        where = f"{path.name}: exemplar {position}"
        if isinstance(item, dict) and "example_index" in item:
            item = {**item, "example_id": item["example_index"]}
        exemplar = _typed(Exemplar, item, where)
        try:
            words = tuple(_typed(Highlight, w, where) for w in exemplar.words)
        except TypeError as exc:
            raise BundleError(f"{where}: malformed words ({exc})") from exc
        exemplars.append(dataclasses.replace(exemplar, words=words))
    return tuple(exemplars)


# -- examples: the training examples, one JSON line each, read by id with one positioned read


@dataclass(frozen=True)
class ExampleRow:
    id: int
    text: str
    text_pair: str | None
    label: int  # index into the manifest's labels
    split: str  # the source split, such as sst2:train


def write_examples(directory: Path, rows: Iterable[ExampleRow]) -> int:
    """``examples.jsonl`` (rows in id order) and the byte offset of every line; returns the count."""
    offsets = [0]
    with open(directory / EXAMPLES_FILE, "wb") as handle:
        for expected, row in enumerate(rows):
            if row.id != expected:
                raise ValueError(f"example rows must come in id order: got id {row.id} at position {expected}")
            handle.write(json.dumps(dataclasses.asdict(row), ensure_ascii=False).encode("utf-8") + b"\n")
            offsets.append(handle.tell())
    np.save(directory / EXAMPLE_OFFSETS_FILE, np.asarray(offsets, dtype=np.int64))
    return len(offsets) - 1


class ExampleStore:
    """Rows of ``examples.jsonl`` by id.

    The offsets are memory-mapped and rows are read with ``os.pread``, which takes no file
    position, so threads can share one store and nothing is loaded up front.
    """

    def __init__(self, directory: str | Path):
        self._fd = -1
        self.offsets = np.load(Path(directory) / EXAMPLE_OFFSETS_FILE, mmap_mode="r")
        self._fd = os.open(Path(directory) / EXAMPLES_FILE, os.O_RDONLY)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, example_id: int) -> ExampleRow:
        if not 0 <= example_id < len(self):
            raise KeyError(example_id)
        start, end = int(self.offsets[example_id]), int(self.offsets[example_id + 1])
        return _typed(ExampleRow, json.loads(os.pread(self._fd, end - start, start)), f"{EXAMPLES_FILE}: row {example_id}")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()
