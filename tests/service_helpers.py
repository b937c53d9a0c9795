"""Builders shared by the server tests: a fake-backend ServingModel and a running server."""

from __future__ import annotations

import contextlib

import numpy as np

from core.bundle import Exemplar
from core.highlights import Highlight
from service.backend import FakeBackend
from service.config import ServerConfig
from service.engine import ServingModel
from service.preprocess import InputLimits, Preprocessor
from service.server import ProtoLMServer

LABELS = ["negative", "positive"]


def minilm_tokenizer(max_length: int = 32):
    from tokenizers import Tokenizer

    from protolm.encoders import resolve_encoder_path
    from core.graph_inputs import configure_tokenizer

    return configure_tokenizer(Tokenizer.from_file(f"{resolve_encoder_path('minilm')}/tokenizer.json"), max_length)


def fake_model(config: ServerConfig, backend: FakeBackend | None = None, name: str = "fake", is_pair: bool = False) -> ServingModel:
    backend = backend or FakeBackend(num_classes=2, num_prototypes=4)
    exemplars = tuple(
        Exemplar(prototype=p, prototype_class=p // 2, example_id=p, text=f"exemplar {p}", text_pair=None, label=p // 2,
                 distance=0.5, words=(Highlight("exemplar", 0, 8, 1.0, 0),))
        for p in range(backend.num_prototypes)
    )
    return ServingModel(
        name=name,
        version="1",
        labels=LABELS,
        is_pair=is_pair,
        max_length=32,
        encoder="fake",
        variant="fp32",
        format_version=1,
        metrics={"accuracy": 0.5},
        preprocessor=Preprocessor(minilm_tokenizer(), is_pair, InputLimits(config.max_inputs_per_request, config.max_text_chars)),
        backend=backend,
        prototype_class=np.arange(backend.num_prototypes) // 2,
        exemplars=exemplars,
        examples=None,
    )


def server_config(**overrides) -> ServerConfig:
    values = dict(bundle_dir="fake", host="127.0.0.1", port=0, metrics_port=0, max_wait_ms=2.0, drain_seconds=5.0)
    values.update(overrides)
    return ServerConfig(**values)


@contextlib.asynccontextmanager
async def running_server(config: ServerConfig, load_model):
    server = ProtoLMServer(config, load_model=load_model)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)
