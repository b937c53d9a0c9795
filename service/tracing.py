"""OpenTelemetry traces of the served calls; off unless ``--tracing`` (``PROTOLM_TRACING``).

Off, this module is all there is: :data:`NO_CALL` and :data:`NO_BATCH` do nothing, and
opentelemetry is never imported. On, every protolm and Open Inference Protocol call gets a
SERVER span named after its gRPC method (``protolm.v1.ProtoLMService/Classify``), a child of
the caller's trace context when the call's metadata carries one (W3C ``traceparent`` and
``tracestate``; OTEL_PROPAGATORS may add others), with these children:

    tokenize         the call's inputs tokenised (in the tokenizer threads)
    queue            from queueing to the start of the first batch holding one of its inputs
    batch            one per forward pass, in the trace of the first traced call in it,
                     with a link to every call in it
    inference        the call's part of a batch (one per batch it is in), linked to the batch
    exemplar_lookup  Explain's nearest training examples (FAISS)

Spans start and end on the event loop with explicit parents, never through a "current span"
that the executor threads would not see; the call being served travels in a context
variable, as the request id does. Where spans go and which calls are sampled are the standard
OTEL_* variables' business, read by the SDK itself: OTEL_TRACES_EXPORTER (``otlp``, also
``console`` or ``none``), OTEL_EXPORTER_OTLP_ENDPOINT and the exporter's other variables,
OTEL_TRACES_SAMPLER and its argument, OTEL_SERVICE_NAME (``protolm`` unless set),
OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_* and OTEL_SDK_DISABLED.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from core.errors import ConfigError

log = logging.getLogger(__name__)
INSTRUMENTATION = "protolm.service"
DEFAULT_SERVICE_NAME = "protolm"
EXPORTER_GROUP = "opentelemetry_traces_exporter"  # the entry points the SDK's own configurator loads exporters from
OTLP_EXPORTERS = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
# gRPC codes that mark a server span as failed (OpenTelemetry's semantic conventions for RPC)
SERVER_ERROR_CODES = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})


class CallTrace:
    """One call's spans. This base class is the no-op: tracing off, or the call not sampled."""

    recording = False

    def set_inputs(self, count: int) -> None:
        """``protolm.inputs`` on the call's span."""

    def span(self, name: str) -> contextlib.AbstractContextManager:
        """A child span around a block of the call's work."""
        return contextlib.nullcontext()

    def queued(self) -> None:
        """Opens ``queue``; the first batch holding one of the call's inputs closes it."""

    def end(self, code: Any) -> None:
        """Ends the call's span with its gRPC status code (a ``grpc.StatusCode``)."""


class BatchTrace:
    """One batch's spans; this base class is the no-op."""

    def end(self, error: BaseException | None = None) -> None:
        """Ends the batch's span and its calls' ``inference`` spans."""


NO_CALL = CallTrace()
NO_BATCH = BatchTrace()
_current: contextvars.ContextVar[CallTrace] = contextvars.ContextVar("protolm_call_trace", default=NO_CALL)


def current_call() -> CallTrace:
    """The call the running task serves (:data:`NO_CALL` when none is traced)."""
    return _current.get()


def batch_started(calls: Iterable[CallTrace], size: int, padded_tokens: int) -> BatchTrace:
    """``batch`` and an ``inference`` span per traced call, for a batch whose inputs belong
    to ``calls`` (one entry per input); ends the calls' ``queue`` spans. A no-op unless one of
    the calls is traced."""
    inputs = Counter(call for call in calls if call.recording)
    if not inputs:
        return NO_BATCH
    first = next(iter(inputs))
    return first.batch(inputs, size, padded_tokens)


class Tracer:
    """Tracing off: every call is :data:`NO_CALL`."""

    def start_call(self, full_method: str, metadata: dict[str, str], request_id: str) -> CallTrace:
        """The call's span (made the task's current call), a child of the trace context in ``metadata``."""
        return NO_CALL

    def close(self) -> None:
        """Sends the spans still buffered (blocking: run it off the event loop)."""


def tracer(enabled: bool) -> Tracer:
    """The server's tracer: the no-op one, or OpenTelemetry configured from the OTEL_* variables."""
    return OpenTelemetryTracer() if enabled else Tracer()


class OpenTelemetryTracer(Tracer):
    """Spans through an OpenTelemetry SDK ``TracerProvider``: the one given (tests), or one
    built from the OTEL_* variables, which :meth:`close` then shuts down."""

    def __init__(self, provider=None):
        try:
            from opentelemetry import propagate
            from opentelemetry.trace import (
                Link,
                SpanKind,
                Status,
                StatusCode,
                set_span_in_context,
            )
        except ImportError:
            raise ConfigError("--tracing needs OpenTelemetry: pip install 'protolm[tracing]'") from None
        self._owns_provider = provider is None
        self.provider = provider_from_environment() if provider is None else provider
        self.tracer = self.provider.get_tracer(INSTRUMENTATION)
        self.extract = propagate.extract
        self.Link, self.SpanKind, self.Status, self.StatusCode = Link, SpanKind, Status, StatusCode
        self.in_context = set_span_in_context

    def start_call(self, full_method: str, metadata: dict[str, str], request_id: str) -> CallTrace:
        name = full_method.lstrip("/")
        service, _, method = name.rpartition("/")
        span = self.tracer.start_span(
            name,
            context=self.extract(metadata),
            kind=self.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method, "protolm.request_id": request_id},
        )
        if not span.is_recording():  # not sampled (or OTEL_SDK_DISABLED): nothing more to pay
            return NO_CALL
        call = _Call(self, span)
        call.token = _current.set(call)
        return call

    def failed(self, span, error: BaseException) -> None:
        span.set_status(self.Status(self.StatusCode.ERROR, type(error).__name__))

    def close(self) -> None:
        if self._owns_provider:
            self._owns_provider = False  # once: a server stopped twice shuts it down once
            self.provider.shutdown()


class _Call(CallTrace):
    recording = True

    def __init__(self, otel: OpenTelemetryTracer, span):
        self.otel, self.server = otel, span
        self.parent = otel.in_context(span)
        self.token: contextvars.Token | None = None
        self.queue = None

    def set_inputs(self, count: int) -> None:
        self.server.set_attribute("protolm.inputs", count)

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[Any]:
        child = self.otel.tracer.start_span(name, context=self.parent)
        try:
            yield child
        except BaseException as error:  # CancelledError too: the caller left during this step
            self.otel.failed(child, error)
            raise
        finally:
            child.end()

    def queued(self) -> None:
        self.dequeued()
        self.queue = self.otel.tracer.start_span("queue", context=self.parent)

    def dequeued(self) -> None:
        if self.queue is not None:
            self.queue.end()
            self.queue = None

    def batch(self, inputs: Counter, size: int, padded_tokens: int) -> BatchTrace:
        return _Batch(self.otel, inputs, size, padded_tokens)

    def end(self, code: Any) -> None:
        if self.queue is not None:  # refused, cancelled or out of time before any batch
            self.queue.set_status(self.otel.Status(self.otel.StatusCode.ERROR, code.name))
            self.dequeued()
        self.server.set_attribute("rpc.grpc.status_code", code.value[0])
        if code.name in SERVER_ERROR_CODES:
            self.server.set_status(self.otel.Status(self.otel.StatusCode.ERROR, code.name))
        self.server.end()
        if self.token is not None:
            _current.reset(self.token)
            self.token = None


class _Batch(BatchTrace):
    def __init__(self, otel: OpenTelemetryTracer, inputs: Counter, size: int, padded_tokens: int):
        self.otel = otel
        calls = list(inputs)
        for call in calls:
            call.dequeued()
        self.span = otel.tracer.start_span(
            "batch",
            context=calls[0].parent,
            attributes={"protolm.batch.size": size, "protolm.batch.padded_tokens": padded_tokens, "protolm.batch.calls": len(calls)},
            links=[otel.Link(call.server.get_span_context(), {"protolm.inputs": inputs[call]}) for call in calls],
        )
        to_batch = [otel.Link(self.span.get_span_context())]
        self.inferences = []
        for call in calls:
            self.inferences.append(otel.tracer.start_span(
                "inference", context=call.parent, links=to_batch,
                attributes={"protolm.inputs": inputs[call], "protolm.batch.size": size},
            ))

    def end(self, error: BaseException | None = None) -> None:
        for span in (*self.inferences, self.span):
            if error is not None:
                self.otel.failed(span, error)
            span.end()


def provider_from_environment():
    """A ``TracerProvider`` as the OTEL_* variables describe it: the SDK reads the sampler,
    the resource and each exporter's settings itself; OTEL_TRACES_EXPORTER picks the
    exporters by the same entry points as the SDK's own configurator."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG
    names = []
    for name, exporter in exporters_from_environment():
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
        names.append(name)
    log.info("tracing on: service %s, exporters %s", resource.attributes.get(SERVICE_NAME), ", ".join(names) or "none")
    return provider


def exporters_from_environment(environ: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    """The span exporters OTEL_TRACES_EXPORTER names (default ``otlp``: gRPC, or HTTP when
    OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL is ``http/protobuf``), each built with no arguments
    so that it reads its own OTEL_EXPORTER_* variables."""
    from importlib.metadata import entry_points

    environ = os.environ if environ is None else environ
    exporters = []
    for name in (n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")):
        if name in ("", "none"):
            continue
        entry = name
        if name == "otlp":
            protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip()
            if protocol not in OTLP_EXPORTERS:
                raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: protolm exports traces over {' or '.join(OTLP_EXPORTERS)}")
            entry = OTLP_EXPORTERS[protocol]
        found = list(entry_points(group=EXPORTER_GROUP, name=entry))
        if not found:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name}: no {entry} span exporter is installed "
                "(protolm[tracing] brings otlp over gRPC; opentelemetry-exporter-otlp-proto-http the HTTP one)"
            )
        exporters.append((name, found[0].load()()))
    return exporters
