"""Writing the bundle's files that need the training side's libraries: the tokenizer, the
FAISS indexes, and the library versions the manifest records (``core.bundle`` writes the rest)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from core.bundle import TOKENIZER_FILE
from core.graph_inputs import configure_tokenizer
from protolm.model import EncoderClassifier

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
