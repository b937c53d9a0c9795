"""The data plane: Classify and Explain on plain objects, independent of gRPC.

A :class:`ServingModel` is everything loaded from one bundle (tokenizer, ONNX session,
exemplars, example index) plus its own batcher. Reloading builds and warms a new one off the
event loop, then swaps the reference in one assignment: requests already queued finish on
the old model, new ones go to the new, and a bundle that fails to load leaves the old one
serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from core.bundle import ExampleRow, Exemplar
from core.errors import InvalidInputError, NotReadyError
from core.explanation import DEFAULT_TOP_PROTOTYPES, Classification, Explanation, NearestExample, PrototypeMatch, evidence
from core.highlights import token_highlights, word_highlights
from core.similarity import Metric
from service import tracing
from service.backend import Backend, InputOutputs
from service.batcher import Completed, DynamicBatcher
from service.config import ServerConfig
from service.metrics import Metrics
from service.preprocess import EncodedInput, Preprocessor, TextInput

log = logging.getLogger(__name__)
TOKENIZER_THREADS = 2


class ExampleLookup:
    """Nearest training examples: a FAISS index over pooled encodings and a row reader."""

    def __init__(self, index, read_row: Callable[[int], ExampleRow], metric: Metric, description: str):
        self.index = index
        self.read_row = read_row
        self.metric = metric
        self.description = description

    def search(self, pooled: np.ndarray, k: int) -> list[list[tuple[ExampleRow, float]]]:
        scores, ids = self.index.search(self.metric.prepare(pooled), k)
        distances = self.metric.distances(scores)
        return [
            [(self.read_row(int(i)), float(d)) for i, d in zip(row_ids, row_distances) if i >= 0]
            for row_ids, row_distances in zip(ids, distances)
        ]


@dataclass
class ServingModel:
    name: str
    version: str
    labels: list[str]
    is_pair: bool
    max_length: int
    encoder: str
    variant: str
    format_version: int
    metrics: dict[str, float]
    preprocessor: Preprocessor
    backend: Backend
    prototype_class: np.ndarray
    exemplars: tuple[Exemplar, ...] | None
    last_layer: np.ndarray | None  # [classes, prototypes]; None for bundles before format 3
    examples: ExampleLookup | None
    batcher: DynamicBatcher | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Timing:
    queue_seconds: float
    inference_seconds: float
    batch_size: int


@dataclass(frozen=True)
class ExplainOptions:
    top_prototypes: int = DEFAULT_TOP_PROTOTYPES
    nearest_examples: int = 0
    words: bool = True


@dataclass(frozen=True)
class Served:
    """A reply's results with the model that produced them and how long they took."""

    results: list[Any]
    model: ServingModel
    timing: Timing


class Engine:
    def __init__(self, config: ServerConfig, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self.model: ServingModel | None = None
        self._model_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protolm-model")
        # Tokenising runs here, never on the event loop: health checks and small calls stay
        # fast while a large request is being tokenised (the tokenizer releases the GIL).
        self._tokenizer_executor = ThreadPoolExecutor(max_workers=TOKENIZER_THREADS, thread_name_prefix="protolm-tokenize")
        self._reload_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self.model is not None

    async def activate(self, load: Callable[[], ServingModel]) -> ServingModel:
        """Load and warm a model off the event loop, then make it the one that serves."""
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(None, load)
            await loop.run_in_executor(self._model_executor, model.backend.warmup)
            model.batcher = DynamicBatcher(
                model.backend.run,
                max_batch_size=self.config.max_batch_size,
                max_batch_tokens=self.config.max_batch_tokens,
                max_wait_seconds=self.config.max_wait_seconds,
                max_queue_size=self.config.max_queue_size,
                max_padding=self.config.max_padding,
                executor=self._model_executor,
                on_batch=self.metrics.record_batch,
                on_queue_depth=self.metrics.queue_depth.set,
            )
            model.batcher.start()
            previous, self.model = self.model, model
            self.metrics.set_model(model.name, model.version, model.variant, model.backend.provider)
            log.info("serving %s %s (%s on %s)", model.name, model.version, model.variant, model.backend.provider)
        if previous is not None:
            await previous.batcher.stop(drain_seconds=self.config.drain_seconds)
        return model

    async def stop(self, drain_seconds: float) -> None:
        model, self.model = self.model, None
        if model is not None:
            await model.batcher.stop(drain_seconds=drain_seconds)
        self._model_executor.shutdown(wait=False)
        self._tokenizer_executor.shutdown(wait=False)

    def current_model(self) -> ServingModel:
        if self.model is None:
            raise NotReadyError("the model is not loaded yet")
        return self.model

    async def _run(self, inputs: list[TextInput], deadline: float | None, method: str):
        call = tracing.current_call()
        call.set_inputs(len(inputs))
        while True:
            model = self.current_model()
            model.preprocessor.validate(inputs)
            model.batcher.check_capacity(len(inputs))  # overload is refused before any tokenising
            with call.span("tokenize"):
                encoded = await asyncio.get_running_loop().run_in_executor(self._tokenizer_executor, model.preprocessor.encode, inputs)
            if self.model is model:
                break
            # a reload swapped the model while this request was tokenised: the old batcher
            # takes no more work, and the new model may tokenise differently
        call.queued()
        completed: list[Completed[InputOutputs]] = await model.batcher.submit(encoded, [e.length for e in encoded], deadline)
        self.metrics.inputs.labels(method=method).inc(len(encoded))
        truncated = sum(e.truncated for e in encoded)
        if truncated:
            self.metrics.truncated_inputs.inc(truncated)
        for c in completed:
            self.metrics.queue_duration.observe(c.queue_seconds)
        timing = Timing(
            queue_seconds=max(c.queue_seconds for c in completed),
            inference_seconds=sum({id(c.batch): c.batch.seconds for c in completed}.values()),
            batch_size=max(c.batch.size for c in completed),
        )
        return model, encoded, [c.value for c in completed], timing

    async def classify(self, inputs: list[TextInput], deadline: float | None = None) -> Served:
        model, encoded, outputs, timing = await self._run(inputs, deadline, "Classify")
        return Served([classification(model, e, o) for e, o in zip(encoded, outputs)], model, timing)

    def check_explain_options(self, options: ExplainOptions) -> None:
        if options.top_prototypes > self.config.max_top_prototypes:
            raise InvalidInputError(f"top_prototypes is {options.top_prototypes}; the limit is {self.config.max_top_prototypes}")
        if options.nearest_examples > self.config.max_nearest_examples:
            raise InvalidInputError(
                f"nearest_examples is {options.nearest_examples}; the limit is {self.config.max_nearest_examples}"
            )
        if options.nearest_examples and (self.model is not None and self.model.examples is None):
            raise InvalidInputError("this bundle has no training-example index; ask for nearest_examples = 0")

    async def explain(self, inputs: list[TextInput], options: ExplainOptions, deadline: float | None = None) -> Served:
        self.check_explain_options(options)
        model, encoded, outputs, timing = await self._run(inputs, deadline, "Explain")
        neighbours: list[list[tuple[ExampleRow, float]]] = [[] for _ in encoded]
        if options.nearest_examples and model.examples is not None:
            pooled = np.stack([o.pooled for o in outputs])
            with tracing.current_call().span("exemplar_lookup"):
                neighbours = await asyncio.get_running_loop().run_in_executor(
                    None, model.examples.search, pooled, options.nearest_examples
                )
        results = [
            explanation(model, e, o, options, n) for e, o, n in zip(encoded, outputs, neighbours)
        ]
        return Served(results, model, timing)

def classification(model: ServingModel, encoded: EncodedInput, outputs: InputOutputs) -> Classification:
    """One input's label and probabilities from its forward pass."""
    label_id = int(np.argmax(outputs.probabilities))
    return Classification(
        label=model.labels[label_id],
        label_id=label_id,
        probabilities={name: float(p) for name, p in zip(model.labels, outputs.probabilities)},
        truncated=encoded.truncated,
        num_tokens=encoded.length,
    )


def explanation(model: ServingModel, encoded: EncodedInput, outputs: InputOutputs, options: ExplainOptions, neighbours) -> Explanation:
    """One input's explanation from its forward pass and its nearest training examples."""
    if options.words:
        weights = word_highlights(encoded.segments, encoded.offsets, encoded.sequence_ids, encoded.word_ids, outputs.token_attention)
    else:
        weights = token_highlights(encoded.segments, encoded.offsets, encoded.sequence_ids, outputs.token_attention)
    k = min(options.top_prototypes, len(outputs.similarities))
    top = np.argsort(-outputs.similarities, kind="stable")[:k]
    prototypes = [
        PrototypeMatch(
            prototype_id=int(p),
            label=model.labels[int(model.prototype_class[p])],
            label_id=int(model.prototype_class[p]),
            similarity=float(outputs.similarities[p]),
            exemplar=model.exemplars[p] if model.exemplars else None,
        )
        for p in top
    ]
    nearest = [
        NearestExample(
            example_id=row.id,
            text=row.text,
            text_pair=row.text_pair,
            label=model.labels[row.label],
            distance=distance,
            split=row.split,
        )
        for row, distance in neighbours
    ]
    reasons = None
    if model.last_layer is not None:
        reasons = evidence(model.last_layer, outputs.similarities, outputs.logits, model.labels, model.prototype_class,
                           model.exemplars, options.top_prototypes)
    return Explanation(classification(model, encoded, outputs), weights, prototypes, nearest, reasons)


def deadline_from(time_remaining: float | None) -> float | None:
    """A gRPC context's remaining time as a monotonic deadline."""
    return None if time_remaining is None else time.monotonic() + time_remaining
