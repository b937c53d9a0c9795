"""Writing the bundle's files: tokenizer, exemplars, indexes, and the manifest that seals them."""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from protolm.model import EncoderClassifier
from protolm.projection import Exemplar
from service.bundle import EXEMPLARS_FILE, MANIFEST_FILE, TOKENIZER_FILE, configure_tokenizer, manifest_bytes, sha256_file

VERSIONED_PACKAGES = {
    "protolm": "protolm",
    "torch": "torch",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "faiss": "faiss-cpu",
}


def write_tokenizer(model: EncoderClassifier, directory: Path):
    """Write the fast tokenizer as one ``tokenizer.json``, truncating to the model's max
    length; returns it as a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str())
    configure_tokenizer(tokenizer, model.config.max_length).save(str(directory / TOKENIZER_FILE))
    return tokenizer


def write_exemplars(directory: Path, exemplars: list[Exemplar]) -> Path:
    records = []
    for exemplar in exemplars:
        record = asdict(exemplar)
        record["example_id"] = record.pop("example_index")
        records.append(record)
    path = directory / EXEMPLARS_FILE
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def write_index(index, path: Path) -> Path:
    import faiss

    faiss.write_index(index, str(path))
    return path


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name, distribution in VERSIONED_PACKAGES.items():
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_manifest(directory: Path, manifest: dict) -> Path:
    """Add the size and sha256 of every other file in ``directory`` and write the manifest."""
    files = {
        path.name: {"size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST_FILE
    }
    path = directory / MANIFEST_FILE
    path.write_bytes(manifest_bytes({**manifest, "files": files, "versions": library_versions()}))
    return path
