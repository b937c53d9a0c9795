"""Thin gRPC servicers: protobuf in, plain objects to the engine, protobuf out.

Errors are not handled here: they propagate to the interceptor in :mod:`service.interceptors`,
the one place that maps them to status codes.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from core.bundle import Exemplar
from core.errors import InvalidInputError
from core.explanation import DEFAULT_TOP_PROTOTYPES, Classification, Contribution, Evidence, Explanation
from core.highlights import Highlight
from service.engine import Engine, ExplainOptions, Served, ServingModel, deadline_from
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from service.interceptors import current_request_id
from service.preprocess import TextInput


def _inputs(request) -> list[TextInput]:
    return [TextInput(i.text, i.text_pair if i.HasField("text_pair") else None) for i in request.inputs]


def _metadata(served: Served) -> pb.ResponseMetadata:
    return pb.ResponseMetadata(
        model_name=served.model.name,
        model_version=served.model.version,
        queue_seconds=served.timing.queue_seconds,
        inference_seconds=served.timing.inference_seconds,
        batch_size=served.timing.batch_size,
        request_id=current_request_id(),
    )


def _classification(c: Classification) -> pb.Classification:
    return pb.Classification(
        label=c.label,
        label_id=c.label_id,
        probabilities=[
            pb.ClassProbability(label=name, label_id=i, probability=p) for i, (name, p) in enumerate(c.probabilities.items())
        ],
        truncated=c.truncated,
        num_tokens=c.num_tokens,
    )


def _span(h: Highlight) -> pb.WeightedSpan:
    segment = pb.SEGMENT_TEXT if h.segment == 0 else pb.SEGMENT_TEXT_PAIR
    return pb.WeightedSpan(text=h.text, start=h.start, end=h.end, weight=h.weight, segment=segment)


def _exemplar(exemplar: Exemplar, labels: list[str]) -> pb.Exemplar:
    return pb.Exemplar(
        example_id=exemplar.example_id,
        text=exemplar.text,
        text_pair=exemplar.text_pair,
        label=labels[exemplar.label],
        label_id=exemplar.label,
        distance=exemplar.distance,
        words=[_span(w) for w in exemplar.words],
    )


class ExemplarMessages:
    """Each prototype's exemplar as a message, built once per served model. An Explain reply
    carries up to three times top_prototypes of them (matches, supporting, opposing), and
    building them for every reply cost more than the rest of the reply."""

    KEPT = 2  # the serving model and, during a reload's drain, the one before it

    def __init__(self):
        self._built: dict[int, tuple[ServingModel, tuple[pb.Exemplar, ...]]] = {}

    def of(self, model: ServingModel) -> tuple[pb.Exemplar, ...]:
        entry = self._built.get(id(model))
        if entry is None or entry[0] is not model:
            entry = (model, tuple(_exemplar(e, model.labels) for e in model.exemplars or ()))
            self._built[id(model)] = entry
            while len(self._built) > self.KEPT:
                del self._built[next(iter(self._built))]
        return entry[1]


def _contribution(c: Contribution, exemplars: tuple[pb.Exemplar, ...]) -> pb.Contribution:
    return pb.Contribution(
        prototype_id=c.prototype_id,
        label=c.label,
        label_id=c.label_id,
        similarity=c.similarity,
        weight=c.weight,
        contribution=c.contribution,
        exemplar=exemplars[c.prototype_id] if c.exemplar is not None else None,
    )


def _evidence(e: Evidence, exemplars: tuple[pb.Exemplar, ...]) -> pb.Evidence:
    return pb.Evidence(
        label=e.label,
        versus_label=e.versus,
        margin=e.margin,
        total=e.total,
        supporting=[_contribution(c, exemplars) for c in e.supporting],
        opposing=[_contribution(c, exemplars) for c in e.opposing],
    )


def _explanation(e: Explanation, exemplars: tuple[pb.Exemplar, ...]) -> pb.Explanation:
    return pb.Explanation(
        classification=_classification(e.classification),
        weights=[_span(w) for w in e.weights],
        prototypes=[
            pb.PrototypeMatch(
                prototype_id=p.prototype_id,
                label=p.label,
                label_id=p.label_id,
                similarity=p.similarity,
                exemplar=exemplars[p.prototype_id] if p.exemplar is not None else None,
            )
            for p in e.prototypes
        ],
        nearest_examples=[
            pb.NearestExample(
                example_id=n.example_id, text=n.text, text_pair=n.text_pair, label=n.label, distance=n.distance, split=n.split
            )
            for n in e.nearest_examples
        ],
        evidence=_evidence(e.evidence, exemplars) if e.evidence is not None else None,
    )


def model_info(engine: Engine) -> pb.ModelInfo:
    model = engine.current_model()
    return pb.ModelInfo(
        name=model.name,
        version=model.version,
        labels=model.labels,
        task_type=pb.TASK_TYPE_PAIR if model.is_pair else pb.TASK_TYPE_SINGLE,
        max_length=model.max_length,
        encoder=model.encoder,
        num_prototypes=len(model.prototype_class),
        metrics=model.metrics,
        execution_provider=model.backend.provider,
        variant=model.variant,
        example_index=model.examples.description if model.examples else "",
        bundle_format_version=model.format_version,
        max_inputs_per_request=engine.config.max_inputs_per_request,
        max_text_chars=engine.config.max_text_chars,
    )


class ProtoLMServicer(pb_grpc.ProtoLMServiceServicer):
    def __init__(self, engine: Engine):
        self.engine = engine
        self._exemplars = ExemplarMessages()

    async def Classify(self, request, context):
        served = await self.engine.classify(_inputs(request), deadline_from(context.time_remaining()))
        return pb.ClassifyResponse(
            results=[_classification(c) for c in served.results], metadata=_metadata(served)
        )

    async def Explain(self, request, context):
        options = request.options
        if options.granularity not in pb.WeightGranularity.values():
            raise InvalidInputError(f"options.granularity {options.granularity} is not a WeightGranularity value")
        explain_options = ExplainOptions(
            top_prototypes=options.top_prototypes if options.HasField("top_prototypes") else DEFAULT_TOP_PROTOTYPES,
            nearest_examples=options.nearest_examples if options.HasField("nearest_examples") else 0,
            words=options.granularity != pb.WEIGHT_GRANULARITY_TOKEN,
        )
        served = await self.engine.explain(_inputs(request), explain_options, deadline_from(context.time_remaining()))
        exemplars = self._exemplars.of(served.model)
        return pb.ExplainResponse(
            results=[_explanation(e, exemplars) for e in served.results], metadata=_metadata(served)
        )

    async def GetModelInfo(self, request, context):
        return pb.GetModelInfoResponse(model=model_info(self.engine))


class ProtoLMAdminServicer(pb_grpc.ProtoLMAdminServiceServicer):
    def __init__(self, engine: Engine, reload: Callable[[str | None], Awaitable[None]]):
        self.engine = engine
        self.reload = reload

    async def Reload(self, request, context):
        await self.reload(request.bundle_dir if request.HasField("bundle_dir") else None)
        return pb.ReloadResponse(model=model_info(self.engine))
