"""Shared fixtures: tiny random-weight encoders for fast tests, the real data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("PROTOLM_DATA_DIR", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = data_dir()
    if not (path / "sst2").is_dir():
        pytest.skip(f"benchmark data not found at {path} (set PROTOLM_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with the real MiniLM tokenizer, saved like a hub model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from protolm.encoders import resolve_encoder_path

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def make_model(tiny_encoder_dir):
    """Factory for tiny ProtoLM / baseline models on the tiny encoder."""
    import torch

    from protolm.model import ARCHITECTURES, ModelConfig

    def build(architecture="protolm", label_names=("negative", "positive"), is_pair=False, per_class=3, similarity="inverse", seed=0):
        torch.manual_seed(seed)
        config = ModelConfig(
            architecture=architecture,
            label_names=list(label_names),
            encoder=str(tiny_encoder_dir),
            is_pair=is_pair,
            max_length=64,
            prototypes_per_class=per_class,
            similarity=similarity,
        )
        return ARCHITECTURES[architecture].from_encoder(config).eval()

    return build
