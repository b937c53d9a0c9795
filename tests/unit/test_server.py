"""The gRPC server end to end on a loopback port, with the deterministic fake backend."""

import asyncio
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.errors import BundleError
from service.backend import FakeBackend
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from tests.service_helpers import HeldBackend, fake_model, running_server, server_config, until


def stubs(port):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.ProtoLMServiceStub(channel), health_pb2_grpc.HealthStub(channel)


async def refuses_calls(health) -> bool:
    """True once the server turns a new call away (it has begun to shut down)."""
    try:
        await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
    except grpc.aio.AioRpcError:
        return True
    return False


def classify_request(*texts):
    return pb.ClassifyRequest(inputs=[pb.TextInput(text=t) for t in texts])


async def test_classify_and_explain_answer_each_input_with_metadata():
    config = server_config()
    async with running_server(config, lambda path, cfg: fake_model(cfg)) as server:
        channel, api, _ = stubs(server.port)
        texts = ["a good film", "a bad film that goes on and on", "fine"]
        response = await api.Classify(classify_request(*texts), metadata=(("x-request-id", "req-1"),))
        assert len(response.results) == 3
        for result in response.results:
            assert result.label in ("negative", "positive")
            assert [p.label for p in result.probabilities] == ["negative", "positive"]
            assert sum(p.probability for p in result.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert response.metadata.model_name == "fake" and response.metadata.request_id == "req-1"
        assert response.metadata.inference_seconds > 0 and response.metadata.batch_size >= 1

        explained = await api.Explain(pb.ExplainRequest(inputs=[pb.TextInput(text=t) for t in texts], options=pb.ExplainOptions(top_prototypes=2)))
        for text, result, classified in zip(texts, explained.results, response.results):
            assert result.classification.label == classified.label  # same model, same input, same answer
            assert [w.text for w in result.weights] == text.split()
            for w in result.weights:
                assert text[w.start : w.end] == w.text
            assert len(result.prototypes) == 2
            assert result.prototypes[0].similarity >= result.prototypes[1].similarity
            assert result.prototypes[0].exemplar.text.startswith("exemplar")
        tokens = await api.Explain(pb.ExplainRequest(inputs=[pb.TextInput(text="unbelievably")], options=pb.ExplainOptions(granularity=pb.WEIGHT_GRANULARITY_TOKEN)))
        assert len(tokens.results[0].weights) > 1  # word pieces, not the merged word
        info = (await api.GetModelInfo(pb.GetModelInfoRequest())).model
        assert info.labels == ["negative", "positive"] and info.execution_provider == "fake"
        assert info.task_type == pb.TASK_TYPE_SINGLE
        await channel.close()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.ClassifyRequest(), "inputs is empty"),
        (classify_request(""), "inputs[0].text has no readable text"),
        (classify_request("ok", "   "), "inputs[1].text has no readable text"),
        (classify_request("ok", "\u200b\ufeff\x00"), "inputs[1].text has no readable text"),
        (classify_request(*["x"] * 5), "5 inputs in one call; the limit is 4"),
        (classify_request("y" * 101), "100"),
        (pb.ClassifyRequest(inputs=[pb.TextInput(text="a", text_pair="b")]), "single texts"),
    ],
)
async def test_bad_input_gets_invalid_argument_and_the_server_keeps_serving(request_, message):
    config = server_config(max_inputs_per_request=4, max_text_chars=100)
    async with running_server(config, lambda path, cfg: fake_model(cfg)) as server:
        channel, api, _ = stubs(server.port)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.Classify(request_)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.value.details()
        assert len((await api.Classify(classify_request("still here"))).results) == 1
        await channel.close()


async def test_explain_limits_are_checked():
    async with running_server(server_config(max_top_prototypes=3), lambda path, cfg: fake_model(cfg)) as server:
        channel, api, _ = stubs(server.port)
        for options, message in ((pb.ExplainOptions(top_prototypes=9), "top_prototypes is 9"), (pb.ExplainOptions(nearest_examples=2), "no training-example index")):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await api.Explain(pb.ExplainRequest(inputs=[pb.TextInput(text="x")], options=options))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.details()
        await channel.close()


async def test_pair_model_requires_pairs():
    async with running_server(server_config(), lambda path, cfg: fake_model(cfg, is_pair=True)) as server:
        channel, api, _ = stubs(server.port)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.Classify(classify_request("only one"))
        assert "set text_pair" in error.value.details()
        ok = await api.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text="a man sleeps", text_pair="a person rests")]))
        assert len(ok.results) == 1
        await channel.close()


async def test_health_goes_not_serving_serving_not_serving():
    gate = asyncio.Event()
    loading = threading.Event()
    loop = asyncio.get_running_loop()
    config = server_config()

    def slow_load(path, cfg):
        loading.set()
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(10)
        return fake_model(cfg)

    from service.server import ProtoLMServer

    server = ProtoLMServer(config, load_model=slow_load)
    starting = asyncio.create_task(server.start())
    await until(loading.is_set)  # listening, health NOT_SERVING, and now loading the model
    channel, api, health = stubs(server.port)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.Classify(classify_request("too early"))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    gate.set()
    await starting
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    assert (await health.Check(health_pb2.HealthCheckRequest(service="protolm.v1.ProtoLMService"))).status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest())
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(server.stop(grace=1.0))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    await stopping
    await channel.close()


async def test_metrics_endpoint_shows_request_duration_and_batch_series():
    async with running_server(server_config(), lambda path, cfg: fake_model(cfg)) as server:
        channel, api, _ = stubs(server.port)
        await api.Classify(classify_request("a", "b"))
        with pytest.raises(grpc.aio.AioRpcError):
            await api.Classify(pb.ClassifyRequest())
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode())
        assert 'protolm_requests_total{code="OK",method="Classify"} 1.0' in body
        assert 'protolm_requests_total{code="INVALID_ARGUMENT",method="Classify"} 1.0' in body
        for series in ("protolm_request_duration_seconds_bucket", "protolm_queue_duration_seconds_count", "protolm_inference_duration_seconds_sum",
                       "protolm_batch_size_bucket", "protolm_batch_tokens_bucket", "protolm_batch_real_tokens_sum", "protolm_queue_depth",
                       "protolm_inputs_total"):
            assert series in body, series
        assert 'protolm_model_info{name="fake",provider="fake",variant="fp32",version="1"} 1.0' in body
        await channel.close()


async def test_a_failing_batch_is_internal_with_a_generic_message_and_the_next_call_works():
    backend = FakeBackend(fail_when=lambda batch: any("explode" in e.input.text for e in batch))
    async with running_server(server_config(max_wait_ms=0.0), lambda path, cfg: fake_model(cfg, backend)) as server:
        channel, api, _ = stubs(server.port)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.Classify(classify_request("explode"), metadata=(("x-request-id", "boom-1"),))
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert error.value.details() == "internal error (request id boom-1)"
        assert len((await api.Classify(classify_request("calm"))).results) == 1
        await channel.close()


async def test_overload_is_rejected_quickly_with_resource_exhausted():
    backend = HeldBackend()
    config = server_config(max_batch_size=1, max_queue_size=2, max_inputs_per_request=2, max_wait_ms=0.0)
    async with running_server(config, lambda path, cfg: fake_model(cfg, backend)) as server:
        channel, api, _ = stubs(server.port)
        batcher = server.engine.model.batcher
        running = asyncio.ensure_future(api.Classify(classify_request("in the model")))
        await until(lambda: backend.held)  # taken by the model, which waits for the test
        queued = [asyncio.ensure_future(api.Classify(classify_request(f"queued {i}"))) for i in range(2)]
        await until(lambda: batcher.queue_depth == 2)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.Classify(classify_request("one too many"))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in error.value.details()
        assert time.monotonic() - started < 0.5  # answered at once, not after the model's batch
        backend.release.set()
        results = await asyncio.gather(running, *queued)
        assert all(len(r.results) == 1 for r in results)  # the accepted work still completes
        await channel.close()


async def test_deadline_exceeded_while_queued():
    backend = HeldBackend()
    config = server_config(max_batch_size=1, max_wait_ms=0.0)
    async with running_server(config, lambda path, cfg: fake_model(cfg, backend)) as server:
        channel, api, _ = stubs(server.port)
        batcher = server.engine.model.batcher
        first = asyncio.ensure_future(api.Classify(classify_request("first")))
        await until(lambda: backend.held)  # the model is busy with it until released
        second = asyncio.ensure_future(api.Classify(classify_request("second"), timeout=1.0))
        await until(lambda: batcher.queue_depth == 1)  # queued behind the first
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await second
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the server's own deadline is a little later than the client's: wait until it has given
        # up on the call too (its handler is over, only the first is still in flight)
        await until(lambda: server.metrics.registry.get_sample_value("protolm_requests_in_flight", {"method": "Classify"}) == 1)
        backend.release.set()
        await first
        await until(lambda: batcher.idle)  # the loop has taken the expired request and run what it was going to run
        assert backend.batches == [1]  # the expired request never reached the model
        await channel.close()


async def test_stop_lets_in_flight_requests_finish_and_refuses_new_ones():
    backend = HeldBackend()
    config = server_config(max_wait_ms=0.0)
    from service.server import ProtoLMServer

    server = ProtoLMServer(config, load_model=lambda path, cfg: fake_model(cfg, backend))
    await server.start()
    channel, api, health = stubs(server.port)
    batcher = server.engine.model.batcher
    in_flight = [asyncio.ensure_future(api.Classify(classify_request(f"in flight {i}"))) for i in range(3)]
    # all three reached the server: in the (held) model or queued behind it
    await until(lambda: sum(backend.held) + batcher.queue_depth == 3)
    stopping = asyncio.create_task(server.stop(grace=5.0))
    await until(lambda: refuses_calls(health))  # stopping has begun while all three are unfinished
    backend.release.set()
    await stopping
    results = await asyncio.gather(*in_flight)
    assert all(len(r.results) == 1 for r in results)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.Classify(classify_request("after"), timeout=1.0)
    assert error.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    await channel.close()


async def test_reload_swaps_models_without_failing_requests_and_a_bad_bundle_keeps_the_old(tmp_path):
    loads = {"count": 0}
    (tmp_path / "current").mkdir()
    (tmp_path / "broken").mkdir()

    def load(path, cfg):
        if path.endswith("broken"):
            raise BundleError("model.onnx: sha256 mismatch")
        loads["count"] += 1
        return fake_model(cfg, FakeBackend(delay_seconds=0.01), name=f"model-{loads['count']}")

    config = server_config(bundle_dir=str(tmp_path / "current"), admin_token="admin-secret")
    async with running_server(config, load) as server:
        channel, api, _ = stubs(server.port)
        admin = pb_grpc.ProtoLMAdminServiceStub(channel)
        admin_token = (("authorization", "Bearer admin-secret"),)
        stop = asyncio.Event()
        answers, failures = [], []

        async def traffic():
            while not stop.is_set():
                try:
                    answers.append((await api.Classify(classify_request("steady traffic"))).metadata.model_name)
                except grpc.aio.AioRpcError as exc:
                    failures.append(exc)

        workers = [asyncio.create_task(traffic()) for _ in range(4)]
        await until(lambda: answers.count("model-1") >= 4)  # traffic flows on the first model
        reloaded = await admin.Reload(pb.ReloadRequest(), metadata=admin_token)
        assert reloaded.model.name == "model-2"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await admin.Reload(pb.ReloadRequest(bundle_dir="broken"), metadata=admin_token)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "sha256" in error.value.details()
        after_failed_reload = len(answers)
        await until(lambda: answers[after_failed_reload:].count("model-2") >= 4)  # and keeps flowing on the second
        stop.set()
        await asyncio.gather(*workers)
        assert not failures
        assert set(answers) == {"model-1", "model-2"}
        assert (await api.GetModelInfo(pb.GetModelInfoRequest())).model.name == "model-2"
        await channel.close()


async def test_bearer_token():
    async with running_server(server_config(auth_token="s3cret"), lambda path, cfg: fake_model(cfg)) as server:
        channel, api, health = stubs(server.port)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await api.Classify(classify_request("x"), metadata=metadata)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = await api.Classify(classify_request("x"), metadata=(("authorization", "Bearer s3cret"),))
        assert len(ok.results) == 1
        # probes need no token
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        await channel.close()


@pytest.mark.parametrize("admin_token", [None, "admin-secret"])
async def test_reflection_lists_the_services(admin_token):
    """The admin service exists only with its own credential (or explicitly on loopback)."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with running_server(server_config(admin_token=admin_token), lambda path, cfg: fake_model(cfg)) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        names = {s.name for s in response.list_services_response.service}
        assert {"protolm.v1.ProtoLMService", "grpc.health.v1.Health"} <= names
        assert ("protolm.v1.ProtoLMAdminService" in names) == (admin_token is not None)
        await call.done_writing()
        await channel.close()


async def test_tls_with_client_certificates(certificates):
    config = server_config(
        tls_cert=str(certificates / "server.pem"), tls_key=str(certificates / "server.key"), tls_client_ca=str(certificates / "ca.pem")
    )
    async with running_server(config, lambda path, cfg: fake_model(cfg)) as server:
        ca = (certificates / "ca.pem").read_bytes()
        with_client_cert = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=(certificates / "client.key").read_bytes(), certificate_chain=(certificates / "client.pem").read_bytes()
        )
        channel = grpc.aio.secure_channel(f"127.0.0.1:{server.port}", with_client_cert)
        response = await pb_grpc.ProtoLMServiceStub(channel).Classify(classify_request("over tls"))
        assert len(response.results) == 1
        await channel.close()
        without = grpc.aio.secure_channel(f"127.0.0.1:{server.port}", grpc.ssl_channel_credentials(root_certificates=ca))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await pb_grpc.ProtoLMServiceStub(without).Classify(classify_request("no client cert"), timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        await without.close()


def test_tls_needs_both_certificate_and_key():
    from core.errors import ConfigError
    from service.server import server_credentials

    with pytest.raises(ConfigError, match="both"):
        server_credentials(server_config(tls_cert="server.pem"))
    with pytest.raises(ConfigError, match="tls-client-ca"):
        server_credentials(server_config(tls_client_ca="ca.pem"))
    assert server_credentials(server_config()) is None


async def test_cli_classify_and_explain_through_a_running_server(capsys):
    from cli.main import main

    async with running_server(server_config(auth_token="secret"), lambda path, cfg: fake_model(cfg)) as server:
        target = f"127.0.0.1:{server.port}"
        assert await asyncio.to_thread(main, ["classify", "--server", target, "a film"]) == 7  # exit code: authentication
        assert capsys.readouterr().err.strip().splitlines() == [f"protolm classify: error: {target}: UNAUTHENTICATED: missing or invalid bearer token"]

    async with running_server(server_config(), lambda path, cfg: fake_model(cfg)) as server:
        target = f"127.0.0.1:{server.port}"
        assert await asyncio.to_thread(main, ["classify", "--server", target, "a fine film", "a dull one"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 2 and out[0].endswith("a fine film")
        assert await asyncio.to_thread(main, ["classify", "--server", target, ""]) == 5  # exit code: refused as invalid
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"protolm classify: error: {target}: INVALID_ARGUMENT: inputs[0].text has no readable text (empty, blank or invisible characters only)"]
        assert await asyncio.to_thread(main, ["explain", target, "a fine film", "--colour", "never", "--top-prototypes", "2"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("prediction: ") and out.count("exemplar: [exemplar]") == 2
        assert await asyncio.to_thread(main, ["explain", target, "a fine film", "--top-prototypes", "999"]) == 5
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"protolm explain: error: {target}: INVALID_ARGUMENT: ") and "top_prototypes" in line
        assert await asyncio.to_thread(main, ["health", "--server", target]) == 0


async def test_a_taken_port_stops_a_second_server_naming_the_address(caplog):
    """gRPC would share a port between two servers (SO_REUSEPORT); protolm refuses, for the
    gRPC port and the metrics port alike, and logs "listening" only once the model is loaded."""
    from core.errors import ConfigError
    from service.server import ProtoLMServer

    caplog.set_level("INFO", logger="service.server")
    async with running_server(server_config(), lambda path, cfg: fake_model(cfg)) as first:
        assert [r.message for r in caplog.records if "listening" in r.message] == [
            f"listening on 127.0.0.1:0 (port {first.port}), metrics on port {first.metrics_port}"
        ]
        loads = []
        second = ProtoLMServer(server_config(port=first.port, metrics_port=-1), load_model=lambda path, cfg: loads.append(path))
        with pytest.raises(ConfigError, match=f"^cannot listen on 127.0.0.1:{first.port}: the port is taken"):
            await second.start()
        third = ProtoLMServer(server_config(metrics_port=first.metrics_port), load_model=lambda path, cfg: loads.append(path))
        with pytest.raises(ConfigError, match=f"^cannot serve metrics on 127.0.0.1:{first.metrics_port}: "):
            await third.start()
        await third.stop(grace=0)
        assert loads == []  # neither got as far as loading the model


async def test_no_metrics_endpoint_is_said_so(caplog):
    caplog.set_level("INFO", logger="service.server")
    async with running_server(server_config(metrics_port=-1), lambda path, cfg: fake_model(cfg)) as server:
        assert server.metrics_port is None
        assert f"listening on 127.0.0.1:0 (port {server.port}), no metrics endpoint" in caplog.messages
