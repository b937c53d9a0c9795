"""Model backends: ONNX Runtime for real, and a deterministic fake for tests of the serving
machinery (batching, errors, shutdown) that must not depend on a model's numbers."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.errors import ConfigError
from core.graph_inputs import pad_batch
from service.preprocess import EncodedInput

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
SERVED_OUTPUTS = ("logits", "probabilities", "token_attention", "prototype_similarities", "pooled")


@dataclass(frozen=True)
class InputOutputs:
    """What one forward pass gives for one input (attention trimmed to its own tokens)."""

    logits: np.ndarray  # [classes]
    probabilities: np.ndarray  # [classes]
    token_attention: np.ndarray  # [tokens]
    similarities: np.ndarray  # [prototypes]
    pooled: np.ndarray  # [hidden]


class Backend(Protocol):
    provider: str

    def warmup(self) -> None: ...

    def run(self, batch: list[EncodedInput]) -> list[InputOutputs]: ...


def gpu_available() -> bool:
    import onnxruntime

    return CUDA in onnxruntime.get_available_providers()


class OnnxBackend:
    """One ONNX Runtime session over the bundle's graph; one batch at a time."""

    def __init__(self, session, use_gpu: bool, uses_token_type_ids: bool):
        self.session = session
        # The providers the session really got, not the ones asked for: CUDA can fail to load.
        self.provider = session.get_providers()[0]
        if use_gpu and self.provider != CUDA:
            raise ConfigError(f"asked for the GPU but ONNX Runtime runs the model on {self.provider}")
        self.input_names = {i.name for i in session.get_inputs()}
        if uses_token_type_ids != ("token_type_ids" in self.input_names):
            raise ConfigError("the graph's token_type_ids input does not match the manifest")

    @staticmethod
    def session_options(intra_op_threads: int = 0, inter_op_threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        return options

    @staticmethod
    def providers(use_gpu: bool) -> list[str]:
        return [CUDA, CPU] if use_gpu else [CPU]

    def run(self, batch: list[EncodedInput]) -> list[InputOutputs]:
        feeds = {name: array for name, array in pad_batch(batch).items() if name in self.input_names}
        logits, probabilities, attention, similarities, pooled = self.session.run(list(SERVED_OUTPUTS), feeds)
        return [
            InputOutputs(logits[row], probabilities[row], attention[row, : encoded.length], similarities[row], pooled[row])
            for row, encoded in enumerate(batch)
        ]

    def warmup(self) -> None:
        """Runs a few shapes so the first real requests do not pay for allocation."""
        for batch, length in ((1, 8), (4, 32), (8, 64)):
            feeds = {
                "input_ids": np.full((batch, length), 1000, dtype=np.int64),
                "attention_mask": np.ones((batch, length), dtype=np.int64),
                "token_type_ids": np.zeros((batch, length), dtype=np.int64),
            }
            self.session.run(list(SERVED_OUTPUTS), {k: v for k, v in feeds.items() if k in self.input_names})


class FakeBackend:
    """Deterministic outputs derived from the token ids; can be slowed down or made to fail.

    Same input, same output, whatever it is batched with: so batching tests can check that
    results go back to the right callers. Like the real graph, its logits are ``last_layer``
    times the similarities (ProtoPNet's start: +1 own class, -0.5 the others').
    """

    provider = "fake"

    def __init__(self, num_classes: int = 2, num_prototypes: int = 4, hidden_size: int = 8, delay_seconds: float = 0.0, fail_when=None):
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.hidden_size = hidden_size
        self.delay_seconds = delay_seconds
        self.fail_when = fail_when or (lambda batch: False)
        self.batches: list[int] = []
        self.prototype_class = np.arange(num_prototypes) * num_classes // num_prototypes
        own = self.prototype_class[None, :] == np.arange(num_classes)[:, None]
        self.last_layer = np.where(own, 1.0, -0.5).astype(np.float32)

    def warmup(self) -> None:
        pass

    def _vector(self, encoded: EncodedInput, salt: bytes, size: int) -> np.ndarray:
        digest = hashlib.sha256(salt + encoded.ids.tobytes()).digest()
        return np.frombuffer(digest, dtype=np.uint8)[:size].astype(np.float32) / 255.0

    def run(self, batch: list[EncodedInput]) -> list[InputOutputs]:
        self.batches.append(len(batch))
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if self.fail_when(batch):
            raise RuntimeError("fake backend failure")
        outputs = []
        for encoded in batch:
            similarities = self._vector(encoded, b"similarities", self.num_prototypes)
            logits = self.last_layer @ similarities
            probabilities = np.exp(logits) / np.exp(logits).sum()
            attention = np.full(encoded.length, 1.0 / encoded.length, dtype=np.float32)
            outputs.append(
                InputOutputs(
                    logits.astype(np.float32),
                    probabilities.astype(np.float32),
                    attention,
                    similarities,
                    self._vector(encoded, b"pooled", self.hidden_size),
                )
            )
        return outputs
