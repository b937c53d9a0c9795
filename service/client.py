"""A small Python client for the protolm gRPC service."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.bundle import Exemplar
from core.explanation import DEFAULT_TOP_PROTOTYPES, Classification, Contribution, Evidence, Explanation, NearestExample, PrototypeMatch
from core.highlights import Highlight
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc


class ProtoLMClient:
    """Blocking client. ``target`` is ``host:port``; TLS when ``tls_ca`` is given."""

    def __init__(self, target: str, token: str | None = None, tls_ca: str | None = None, timeout: float = 30.0):
        if tls_ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self.channel = grpc.secure_channel(target, credentials)
        else:
            self.channel = grpc.insecure_channel(target)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.stub = pb_grpc.ProtoLMServiceStub(self.channel)
        self.admin = pb_grpc.ProtoLMAdminServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> "ProtoLMClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def _inputs(texts: list[str], text_pairs: list[str] | None) -> list[pb.TextInput]:
        if text_pairs is None:
            return [pb.TextInput(text=t) for t in texts]
        return [pb.TextInput(text=t, text_pair=p) for t, p in zip(texts, text_pairs, strict=True)]

    def classify(self, texts: list[str], text_pairs: list[str] | None = None) -> pb.ClassifyResponse:
        request = pb.ClassifyRequest(inputs=self._inputs(texts, text_pairs))
        return self.stub.Classify(request, timeout=self.timeout, metadata=self.metadata)

    def explain(
        self,
        texts: list[str],
        text_pairs: list[str] | None = None,
        top_prototypes: int = DEFAULT_TOP_PROTOTYPES,
        nearest_examples: int = 0,
        tokens: bool = False,
    ) -> pb.ExplainResponse:
        options = pb.ExplainOptions(
            top_prototypes=top_prototypes,
            nearest_examples=nearest_examples,
            granularity=pb.WEIGHT_GRANULARITY_TOKEN if tokens else pb.WEIGHT_GRANULARITY_WORD,
        )
        request = pb.ExplainRequest(inputs=self._inputs(texts, text_pairs), options=options)
        return self.stub.Explain(request, timeout=self.timeout, metadata=self.metadata)

    def model_info(self) -> pb.ModelInfo:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata).model

    def reload(self, bundle_dir: str | None = None) -> pb.ModelInfo:
        request = pb.ReloadRequest(bundle_dir=bundle_dir) if bundle_dir else pb.ReloadRequest()
        return self.admin.Reload(request, timeout=self.timeout, metadata=self.metadata).model

    def health(self, service: str = "") -> str:
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _highlights(spans) -> list[Highlight]:
    return [Highlight(s.text, s.start, s.end, s.weight, 0 if s.segment != pb.SEGMENT_TEXT_PAIR else 1) for s in spans]


def _exemplar(match: pb.PrototypeMatch | pb.Contribution) -> Exemplar | None:
    """The exemplar of a prototype match or a contribution (both carry the prototype's id)."""
    if not match.HasField("exemplar"):
        return None
    exemplar = match.exemplar
    return Exemplar(
        prototype=match.prototype_id,
        prototype_class=match.label_id,
        example_id=exemplar.example_id,
        text=exemplar.text,
        text_pair=exemplar.text_pair if exemplar.HasField("text_pair") else None,
        label=exemplar.label_id,
        distance=exemplar.distance,
        words=tuple(_highlights(exemplar.words)),
    )


def _contribution(c: pb.Contribution) -> Contribution:
    return Contribution(c.prototype_id, c.label, c.label_id, c.similarity, c.weight, c.contribution, _exemplar(c))


def _evidence(result: pb.Explanation) -> Evidence | None:
    if not result.HasField("evidence"):
        return None
    e = result.evidence
    return Evidence(e.label, e.versus_label, e.margin, e.total, [_contribution(c) for c in e.supporting], [_contribution(c) for c in e.opposing])


def to_explanation(result: pb.Explanation) -> Explanation:
    """A gRPC explanation as the plain object the engine built and :func:`core.explanation.render` prints."""
    classification = result.classification
    return Explanation(
        classification=Classification(
            label=classification.label,
            label_id=classification.label_id,
            probabilities={p.label: p.probability for p in classification.probabilities},
            truncated=classification.truncated,
            num_tokens=classification.num_tokens,
        ),
        weights=_highlights(result.weights),
        prototypes=[
            PrototypeMatch(prototype_id=p.prototype_id, label=p.label, label_id=p.label_id, similarity=p.similarity, exemplar=_exemplar(p))
            for p in result.prototypes
        ],
        nearest_examples=[
            NearestExample(
                example_id=n.example_id,
                text=n.text,
                text_pair=n.text_pair if n.HasField("text_pair") else None,
                label=n.label,
                distance=n.distance,
                split=n.split,
            )
            for n in result.nearest_examples
        ],
        evidence=_evidence(result),
    )
