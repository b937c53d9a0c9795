"""Builders shared by the server tests: a fake-backend ServingModel and a running server."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading


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


class HeldBackend(FakeBackend):
    """A FakeBackend whose batches wait in the model until the test sets ``release``.

    ``held`` records each batch's size as it enters the model (``batches`` once it runs), so
    a test can poll for "the model is busy" and decide itself when the model finishes.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.release = threading.Event()
        self.held: list[int] = []

    def run(self, batch):
        self.held.append(len(batch))
        if not self.release.wait(30):  # a failed test must not leave the model thread stuck
            raise RuntimeError("HeldBackend was never released")
        return super().run(batch)


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
        prototype_class=backend.prototype_class,
        exemplars=exemplars,
        last_layer=backend.last_layer,
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


async def until(condition, seconds: float = 10.0) -> None:
    """Polls instead of sleeping a fixed time, so a loaded machine cannot reorder the steps.

    ``condition`` may return an awaitable (a probe that makes a call), which is awaited."""
    for _ in range(int(seconds / 0.01)):
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never reached the expected state")


def reseal(directory, change) -> None:
    """Change a bundle manifest's JSON and seal it again, as a tool that edits bundles would."""
    import json

    from core.bundle import MANIFEST_FILE, sealed_json

    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    change(manifest)
    manifest.pop("manifest_sha256")
    (directory / MANIFEST_FILE).write_bytes(sealed_json(manifest))


def file_entry(path) -> dict:
    """A file's entry in the manifest's ``files``."""
    from core.bundle import sha256_file

    return {"size": path.stat().st_size, "sha256": sha256_file(path)}
