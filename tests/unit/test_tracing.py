"""OpenTelemetry tracing: the span tree of real calls (SDK in-memory exporter), the caller's
W3C trace context, the batch links, the OTEL_* configuration, and nothing at all when off."""

import asyncio
import contextlib
import itertools
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs protolm[tracing]")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind

from core.bundle import ExampleRow
from core.errors import ConfigError
from core.similarity import METRICS
from service import tracing
from service.engine import ExampleLookup
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from service.server import ProtoLMServer
from tests.service_helpers import fake_model, server_config

REPO = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
EXPLAIN = "protolm.v1.ProtoLMService/Explain"
CLASSIFY = "protolm.v1.ProtoLMService/Classify"


class FakeIndex:
    """A FAISS-like index over three rows: row i scores 1 - i/10 against anything."""

    def search(self, queries, k):
        scores = np.tile(1.0 - np.arange(k, dtype=np.float32) / 10, (len(queries), 1))
        return scores, np.tile(np.arange(k), (len(queries), 1))


def model_with_examples(config):
    model = fake_model(config)
    model.examples = ExampleLookup(FakeIndex(), lambda i: ExampleRow(i, f"example {i}", None, i % 2, "fake:train"),
                                   METRICS["cosine"], "fake")
    return model


def recording_tracer(sampler=None):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracing.OpenTelemetryTracer(provider), exporter


@contextlib.asynccontextmanager
async def traced_server(tracer, **config):
    server = ProtoLMServer(server_config(**config), load_model=lambda path, cfg: model_with_examples(cfg), tracer=tracer)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield pb_grpc.ProtoLMServiceStub(channel), server.port
    finally:
        await channel.close()
        await server.stop(grace=1.0)


def hex_id(number: int, width: int) -> str:
    return f"{number:0{width}x}"


def render(spans) -> str:
    """The spans as an indented tree, children in start order, with their links."""
    by_id = {s.context.span_id: s for s in spans}
    children: dict[int | None, list] = {}
    for s in spans:
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in by_id else None
        children.setdefault(parent, []).append(s)
    lines = []

    def walk(span, depth):
        ms = (span.end_time - span.start_time) / 1e6
        attributes = {k: v for k, v in span.attributes.items() if k.startswith(("rpc.grpc", "protolm.inputs", "protolm.batch.size"))}
        remote = f" (parent {hex_id(span.parent.span_id, 16)} from traceparent)" if span.parent is not None and span.parent.is_remote else ""
        lines.append(f"{'  ' * depth}{span.name} [{hex_id(span.context.span_id, 16)}] {ms:.2f} ms {attributes}{remote}")
        for link in span.links:
            target = by_id.get(link.context.span_id)
            lines.append(f"{'  ' * depth}  -> link to {target.name if target else '?'} [{hex_id(link.context.span_id, 16)}]")
        for child in sorted(children.get(span.context.span_id, []), key=lambda s: s.start_time):
            walk(child, depth + 1)

    for root in sorted(children.get(None, []), key=lambda s: s.start_time):
        lines.append(f"trace {hex_id(root.context.trace_id, 32)}")
        walk(root, 1)
    return "\n".join(lines)


def named(spans, name):
    found = [s for s in spans if s.name == name]
    assert found, f"no {name} span among {[s.name for s in spans]}"
    return found


async def test_an_explain_call_is_one_server_span_under_the_callers_trace_with_a_child_per_stage():
    tracer, exporter = recording_tracer()
    async with traced_server(tracer) as (api, _port):
        request = pb.ExplainRequest(inputs=[pb.TextInput(text="a good film"), pb.TextInput(text="a bad one")],
                                    options=pb.ExplainOptions(top_prototypes=2, nearest_examples=2))
        reply = await api.Explain(request, metadata=(("traceparent", TRACEPARENT), ("tracestate", "vendor=1"), ("x-request-id", "req-7")))
        assert len(reply.results) == 2 and len(reply.results[0].nearest_examples) == 2
    spans = exporter.get_finished_spans()
    print("\n" + render(spans))

    (server,) = named(spans, EXPLAIN)
    assert server.kind == SpanKind.SERVER
    assert hex_id(server.context.trace_id, 32) == TRACE_ID  # the caller's trace
    assert server.parent.is_remote and hex_id(server.parent.span_id, 16) == CALLER_SPAN
    assert server.parent.trace_state.get("vendor") == "1"
    assert dict(server.attributes) == {
        "rpc.system": "grpc", "rpc.service": "protolm.v1.ProtoLMService", "rpc.method": "Explain",
        "protolm.request_id": "req-7", "protolm.inputs": 2, "rpc.grpc.status_code": 0,
    }
    children = sorted((s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id), key=lambda s: s.start_time)
    assert [s.name for s in children] == ["tokenize", "queue", "batch", "inference", "exemplar_lookup"]
    assert all(s.context.trace_id == server.context.trace_id for s in spans)
    for before, after in itertools.pairwise(children):
        if {before.name, after.name} != {"batch", "inference"}:  # the batch and the call's part in it start together
            assert before.end_time <= after.start_time, (before.name, after.name)
    assert all(server.start_time <= s.start_time and s.end_time <= server.end_time for s in children)

    (batch,) = named(spans, "batch")
    (inference,) = named(spans, "inference")
    assert batch.attributes["protolm.batch.size"] == 2 and batch.attributes["protolm.batch.calls"] == 1
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]
    assert [link.context.span_id for link in inference.links] == [batch.context.span_id]
    assert inference.attributes["protolm.inputs"] == 2


async def test_calls_sharing_a_batch_each_link_to_it_and_it_links_to_each():
    tracer, exporter = recording_tracer()
    # the batcher waits for a full batch of 2 (never for 5 s): the two calls share one forward pass
    async with traced_server(tracer, max_batch_size=2, max_wait_ms=5000.0) as (api, _port):
        traces = ("1" * 32, "f" * 31 + "e")
        await asyncio.gather(*(
            api.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text=text)]), metadata=(("traceparent", f"00-{trace}-{CALLER_SPAN}-01"),))
            for trace, text in zip(traces, ("a good film", "a bad film"))
        ))
    spans = exporter.get_finished_spans()
    print("\n" + render(spans))

    servers = named(spans, CLASSIFY)
    (batch,) = named(spans, "batch")
    inferences = named(spans, "inference")
    assert len(servers) == 2 and len(inferences) == 2
    assert {hex_id(s.context.trace_id, 32) for s in servers} == set(traces)
    assert batch.attributes["protolm.batch.size"] == 2 and batch.attributes["protolm.batch.calls"] == 2
    assert batch.parent.span_id in {s.context.span_id for s in servers}  # in the trace of one of them
    assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in servers}
    for server in servers:
        (mine,) = [s for s in inferences if s.parent.span_id == server.context.span_id]
        assert [link.context.span_id for link in mine.links] == [batch.context.span_id]
        (queue,) = [s for s in named(spans, "queue") if s.parent.span_id == server.context.span_id]
        assert queue.end_time <= mine.start_time


async def test_an_open_inference_protocol_call_is_traced_through_the_same_engine():
    from service.grpc_api import grpc_predict_v2_pb2 as oip
    from service.grpc_api import grpc_predict_v2_pb2_grpc as oip_grpc

    tracer, exporter = recording_tracer()
    async with traced_server(tracer) as (_api, port):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        tensor = oip.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1], contents=oip.InferTensorContents(bytes_contents=[b"fine"]))
        await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(oip.ModelInferRequest(model_name="fake", inputs=[tensor]), metadata=(("traceparent", TRACEPARENT),))
        await channel.close()
    spans = exporter.get_finished_spans()
    (server,) = named(spans, "inference.GRPCInferenceService/ModelInfer")
    assert hex_id(server.context.trace_id, 32) == TRACE_ID and server.attributes["rpc.service"] == "inference.GRPCInferenceService"
    children = sorted((s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id), key=lambda s: s.start_time)
    assert [s.name for s in children] == ["tokenize", "queue", "batch", "inference"]


async def test_a_failed_call_ends_its_span_with_the_code_and_an_unsampled_call_records_nothing():
    tracer, exporter = recording_tracer()
    async with traced_server(tracer, max_inputs_per_request=2) as (api, _port):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text="x")] * 3))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (server,) = exporter.get_finished_spans()
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert server.attributes["protolm.inputs"] == 3
    assert server.parent is None  # no traceparent: a new trace

    tracer, exporter = recording_tracer(sampler=ALWAYS_OFF)
    async with traced_server(tracer) as (api, _port):
        await api.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text="fine")]))
    assert exporter.get_finished_spans() == ()
    assert tracing.current_call() is tracing.NO_CALL


def test_exporters_come_from_the_standard_variables():
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    (name, otlp), = tracing.exporters_from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert name == "otlp" and isinstance(otlp, OTLPSpanExporter)
    otlp.shutdown()
    assert tracing.exporters_from_environment({"OTEL_TRACES_EXPORTER": "none"}) == []
    (_, console), = tracing.exporters_from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(console, ConsoleSpanExporter)
    with pytest.raises(ConfigError, match="otlp_proto_http"):
        tracing.exporters_from_environment({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    with pytest.raises(ConfigError, match="zipkin"):
        tracing.exporters_from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_the_service_name_defaults_to_protolm_and_the_sampler_is_the_sdks(monkeypatch):
    from opentelemetry.sdk.resources import SERVICE_NAME

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = tracing.provider_from_environment()
    assert provider.resource.attributes[SERVICE_NAME] == "protolm"
    assert provider.sampler is ALWAYS_OFF
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sentiment-eu")
    provider = tracing.provider_from_environment()
    assert provider.resource.attributes[SERVICE_NAME] == "sentiment-eu"
    provider.shutdown()


async def test_with_tracing_on_the_spans_reach_an_otlp_collector_named_by_the_standard_variables(monkeypatch):
    """--tracing with only OTEL_* variables: the SDK's OTLP gRPC exporter sends the spans to a
    collector (a TraceService on a loopback port here) under the service name protolm."""
    from concurrent import futures

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as collector_pb
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as collector_grpc

    received = []

    class Collector(collector_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received.append(request)
            return collector_pb.ExportTraceServiceResponse()

    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    collector_grpc.add_TraceServiceServicer_to_server(Collector(), collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    try:
        server = ProtoLMServer(server_config(tracing=True), load_model=lambda path, cfg: fake_model(cfg))
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await pb_grpc.ProtoLMServiceStub(channel).Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text="fine")]),
                                                                metadata=(("traceparent", TRACEPARENT),))
        await server.stop(grace=1.0)  # shuts the provider down: the buffered spans are sent
    finally:
        collector.stop(None)
    resources = [r for request in received for r in request.resource_spans]
    services = {a.value.string_value for r in resources for a in r.resource.attributes if a.key == "service.name"}
    spans = [span for r in resources for scope in r.scope_spans for span in scope.spans]
    assert services == {"protolm"}
    assert sorted(span.name for span in spans) == sorted([CLASSIFY, "tokenize", "queue", "batch", "inference"])
    assert {span.trace_id.hex() for span in spans} == {TRACE_ID}


OFF_SCRIPT = r"""
import asyncio, sys
import grpc
from service.grpc_api import protolm_pb2 as pb, protolm_pb2_grpc as pb_grpc
from tests.service_helpers import fake_model, running_server, server_config

async def main():
    async with running_server(server_config(metrics_port=-1), lambda path, cfg: fake_model(cfg)) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = await pb_grpc.ProtoLMServiceStub(channel).Classify(
                pb.ClassifyRequest(inputs=[pb.TextInput(text="fine")]),
                metadata=(("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),))
            assert reply.results[0].label

asyncio.run(main())
print("loaded:", ",".join(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")) or "none")
"""


def test_with_tracing_off_a_served_call_never_imports_opentelemetry():
    result = subprocess.run([sys.executable, "-c", OFF_SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "loaded: none"


def test_the_flag_and_the_variable_turn_it_on(monkeypatch):
    import argparse

    from core.options import add_options, from_namespace
    from service.config import ServerConfig

    def parsed(*argv):
        parser = argparse.ArgumentParser()
        add_options(parser, ServerConfig)
        return from_namespace(ServerConfig, parser.parse_args(argv)).tracing

    monkeypatch.delenv("PROTOLM_TRACING", raising=False)
    assert parsed() is False and parsed("--tracing") is True
    monkeypatch.setenv("PROTOLM_TRACING", "true")
    assert parsed() is True and parsed("--tracing", "false") is False
