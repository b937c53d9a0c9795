"""Reliability probes: what an operator or an attacker can do to a running server.

A real server on a loopback port with the deterministic fake backend (and the real MiniLM
tokenizer); bounded loops; the tests poll for state instead of sleeping.
"""

import asyncio
import logging
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.errors import ConfigError
from core.graph_inputs import configure_tokenizer
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from service.preprocess import InputLimits, Preprocessor, TextInput, longest_first
from service.backend import FakeBackend
from tests.service_helpers import HeldBackend, fake_model, minilm_tokenizer, running_server, server_config, until

CJK = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(10_000))  # 10,000 distinct-ish CJK characters
ENGLISH = " ".join(f"word{i % 97} unbelievably" for i in range(1500))


def stubs(port):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 << 20)])
    return channel, pb_grpc.ProtoLMServiceStub(channel), health_pb2_grpc.HealthStub(channel)


def classify_request(*texts):
    return pb.ClassifyRequest(inputs=[pb.TextInput(text=t) for t in texts])


# -- tokenising: bounded, exact, off the event loop


TEXTS = {"cjk": CJK, "english": ENGLISH, "short": "short text", "one-word": "x" * 5000, "near-cut": ENGLISH[:397],
         "dense": "a " * 300, "sparse": ("unbelievably " * 60)[:700]}


@pytest.mark.parametrize("pair", [None, *TEXTS], ids=lambda p: f"pair-{p}")
@pytest.mark.parametrize("text", TEXTS)
def test_bounded_tokenising_gives_exactly_the_full_texts_tokens(text, pair):
    tokenizer = minilm_tokenizer(max_length=50)
    preprocessor = Preprocessor(tokenizer, pair is not None, InputLimits(64, 10_000))
    # the reference tokenises whole texts; on a long pair its overflow windows cost the
    # product of the lengths, so pairs are checked on their first 2,000 characters
    item = TextInput(TEXTS[text][:2000], TEXTS[pair][:2000]) if pair else TextInput(TEXTS[text])
    (encoded,) = preprocessor.encode([item])
    full = tokenizer.encode(item.text, item.text_pair) if pair else tokenizer.encode(item.text)
    assert encoded.ids.tolist() == full.ids and encoded.offsets == full.offsets and encoded.type_ids.tolist() == full.type_ids
    assert encoded.word_ids == full.word_ids and encoded.sequence_ids == full.sequence_ids
    assert encoded.truncated == bool(full.overflowing)
    assert len(preprocessor.readable_prefixes([CJK])[0]) <= 50 * 8 * 4


@pytest.mark.parametrize("budget", [47, 48])
def test_longest_first_is_the_tokenizers_own(budget):
    tokenizer = minilm_tokenizer(max_length=budget + 3)
    for first in (0, 1, 5, 23, 24, 25, 46, 47, 48, 60):
        for second in (1, 5, 23, 24, 25, 47, 48, 60):
            encoding = tokenizer.encode("a " * first or "b", "c " * second)
            kept = (encoding.sequence_ids.count(0), encoding.sequence_ids.count(1))
            assert longest_first(first or 1, second, budget) == kept, (first, second)


def test_a_long_pair_costs_linear_work_not_the_product_of_its_lengths():
    """Whole-text tokenising of two 10,000-character texts builds overflow windows for
    about 20 s; the service's bounded path takes milliseconds (loose bound)."""
    preprocessor = Preprocessor(minilm_tokenizer(max_length=50), True, InputLimits(64, 10_000))
    started = time.perf_counter()
    (encoded,) = preprocessor.encode([TextInput(CJK, ENGLISH[:10_000])])
    assert time.perf_counter() - started < 2.0 and encoded.truncated and len(encoded.ids) == 50


def test_special_token_strings_are_plain_text_in_training_and_serving_alike(make_model):
    """On a pair model, "[SEP]" typed in the first text must not fake the pair boundary, and
    the trainer's tokenisation and the bundle's give the same ids."""
    model = make_model(is_pair=True)
    text, pair = "a man [SEP] sleeps [CLS] [PAD] [MASK] [UNK]", "a person [SEP] rests"
    training_ids = model.tokenize([text], [pair])["input_ids"][0].tolist()
    tokenizer = configure_tokenizer(minilm_tokenizer(max_length=64), 64)
    (served,) = Preprocessor(tokenizer, True, InputLimits(4, 1000)).encode([TextInput(text, pair)])
    assert served.ids.tolist() == training_ids
    special = set(tokenizer.encode("", add_special_tokens=True).ids) | {tokenizer.token_to_id("[PAD]"), tokenizer.token_to_id("[MASK]"), tokenizer.token_to_id("[UNK]")}
    assert [i for i in training_ids if i in special] == [tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]"), tokenizer.token_to_id("[SEP]")]
    assert served.sequence_ids.count(1) == len(tokenizer.encode(pair, add_special_tokens=False).ids)


async def test_four_huge_requests_do_not_stall_health_checks_or_small_calls():
    config = server_config(max_text_chars=10_000, max_inputs_per_request=64, max_wait_ms=1.0)
    async with running_server(config, lambda path, cfg: fake_model(cfg)) as server:
        channel, api, health = stubs(server.port)
        huge = classify_request(*[CJK] * 64)
        calls = [asyncio.ensure_future(api.Classify(huge, timeout=60)) for _ in range(4)]
        await until(lambda: server.metrics.in_flight.labels(method="Classify")._value.get() >= 4)
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            await api.Classify(classify_request("a fine film"), timeout=5)
            latencies.append(time.perf_counter() - started)
        results = await asyncio.gather(*calls)
        assert all(len(r.results) == 64 and r.results[0].truncated for r in results)
        # measured at a few ms; the loose bound only catches a blocked event loop (seconds before)
        assert max(latencies) < 1.0, latencies
        await channel.close()


# -- the queue: overload refused at once, never-fitting requests refused for good, cancelled calls free their slots


def test_start_up_refuses_requests_that_could_never_be_queued():
    with pytest.raises(ConfigError, match="--max-inputs-per-request 64 is above --max-queue-size 32"):
        server_config(max_inputs_per_request=64, max_queue_size=32)


def busy_model_server(max_queue_size: int, max_inputs_per_request: int):
    """A server whose model holds its first batch until the test releases it."""
    backend = HeldBackend(num_classes=2, num_prototypes=4)
    config = server_config(max_queue_size=max_queue_size, max_inputs_per_request=max_inputs_per_request, max_batch_size=1, max_wait_ms=0.0)
    return backend, running_server(config, lambda path, cfg: fake_model(cfg, backend))


async def hold_the_model(api, backend):
    busy = asyncio.ensure_future(api.Classify(classify_request("held in the model")))
    await until(lambda: backend.held)
    return busy


async def test_a_request_larger_than_the_queue_is_invalid_and_overload_is_refused_before_tokenising():
    backend, serving = busy_model_server(max_queue_size=4, max_inputs_per_request=4)
    async with serving as server:
        channel, api, _ = stubs(server.port)
        busy = await hold_the_model(api, backend)
        queued = asyncio.ensure_future(api.Classify(classify_request("a", "b", "c", "d")))
        await until(lambda: server.engine.model.batcher.queue_depth == 4)
        tokenised = []
        preprocessor = server.engine.model.preprocessor
        original = preprocessor.encode
        preprocessor.encode = lambda inputs: tokenised.append(len(inputs)) or original(inputs)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.Classify(classify_request("one more"))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and tokenised == []
        backend.release.set()
        assert len((await busy).results) == 1 and len((await queued).results) == 4
        await channel.close()


async def test_cancelled_calls_leave_the_queue_at_once():
    backend, serving = busy_model_server(max_queue_size=8, max_inputs_per_request=1)
    async with serving as server:
        channel, api, _ = stubs(server.port)
        busy = await hold_the_model(api, backend)
        batcher = server.engine.model.batcher
        doomed = [api.Classify(classify_request(f"cancelled {i}")) for i in range(8)]
        await until(lambda: batcher.queue_depth == 8)
        for call in doomed:
            call.cancel()
        await until(lambda: batcher.queue_depth == 0)
        assert server.metrics.queue_depth._value.get() == 0
        live = asyncio.ensure_future(api.Classify(classify_request("a live call")))
        await until(lambda: batcher.queue_depth == 1)  # admitted, not RESOURCE_EXHAUSTED
        backend.release.set()
        assert (await live).results[0].label and (await busy).results
        assert backend.held == [1, 1]  # the cancelled calls never reached the model
        await channel.close()


async def test_invisible_only_text_is_refused_like_blank_text():
    async with running_server(server_config(), lambda path, cfg: fake_model(cfg)) as server:
        channel, api, _ = stubs(server.port)
        for text in ("\x00\x00", "\u200b", "\ufeff \u200b", "   "):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await api.Classify(classify_request(text))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no readable text" in error.value.details()
        assert np.isclose(sum(p.probability for p in (await api.Classify(classify_request("fine"))).results[0].probabilities), 1.0)
        await channel.close()


# -- what reaches the servicer: authenticated first, decoded, counted by its final code


def requests_counted(server, method: str, code: str) -> float:
    return server.metrics.requests.labels(method=method, code=code)._value.get()


def raw_call(channel, method: str):
    return channel.unary_unary(f"/protolm.v1.ProtoLMService/{method}", request_serializer=None, response_deserializer=None)


async def test_malformed_bytes_are_invalid_argument_counted_and_logged_once(caplog):
    async with running_server(server_config(), lambda path, cfg: fake_model(cfg)) as server:
        channel, _, _ = stubs(server.port)
        invalid_utf8 = b"\x0a\x04\x0a\x02\xff\xfe"  # inputs[0].text = b"\xff\xfe"
        for payload in (invalid_utf8, b"\xff" * 40, b"\x0a\x80"):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await raw_call(channel, "Classify")(payload, timeout=5)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.value.details() == "malformed request: the bytes are not a valid Classify request message"
        assert requests_counted(server, "Classify", "INVALID_ARGUMENT") == 3
        lines = [r for r in caplog.records if "not a valid request" in r.getMessage()]
        assert len(lines) == 1 and not any(r.exc_info for r in caplog.records)
        await channel.close()


async def test_authentication_comes_before_parsing_and_is_counted(caplog):
    async with running_server(server_config(auth_token="s3cret"), lambda path, cfg: fake_model(cfg)) as server:
        channel, api, health = stubs(server.port)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await raw_call(channel, "Classify")(b"\xff" * 40, timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not [r for r in caplog.records if "not a valid request" in r.getMessage()]
        for scheme in ("Bearer", "bearer", "BEARER"):  # RFC 6750: the scheme is case-insensitive
            response = await api.Classify(classify_request("fine"), metadata=(("authorization", f"{scheme} s3cret"),))
            assert len(response.results) == 1
        assert requests_counted(server, "Classify", "UNAUTHENTICATED") == 1
        assert requests_counted(server, "Classify", "OK") == 3
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        await channel.close()


async def test_an_oversized_request_is_resource_exhausted_and_counted():
    async with running_server(server_config(max_request_bytes=1000), lambda path, cfg: fake_model(cfg)) as server:
        channel, api, _ = stubs(server.port)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.Classify(classify_request("x" * 1500), timeout=5)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "the limit is 1,000" in error.value.details()
        assert requests_counted(server, "Classify", "RESOURCE_EXHAUSTED") == 1
        await channel.close()


async def test_a_deadline_enforced_by_grpc_is_counted_as_deadline_exceeded():
    backend = HeldBackend(num_classes=2, num_prototypes=4)
    async with running_server(server_config(), lambda path, cfg: fake_model(cfg, backend)) as server:
        channel, api, _ = stubs(server.port)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.Classify(classify_request("held past its deadline"), timeout=0.3)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: requests_counted(server, "Classify", "DEADLINE_EXCEEDED") == 1)
        assert requests_counted(server, "Classify", "CANCELLED") == 0
        backend.release.set()
        await channel.close()


async def test_an_unknown_enum_value_is_invalid_argument():
    async with running_server(server_config(), lambda path, cfg: fake_model(cfg)) as server:
        channel, api, _ = stubs(server.port)
        request = pb.ExplainRequest(inputs=[pb.TextInput(text="fine")], options=pb.ExplainOptions(granularity=99))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.Explain(request, timeout=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "granularity 99" in error.value.details()
        await channel.close()


# -- the admin service: its own credential, bundles only under the bundle root


def test_admin_without_a_token_only_on_loopback():
    with pytest.raises(ConfigError, match="loopback"):
        server_config(host="0.0.0.0", admin_without_token=True)
    assert server_config(host="[::1]", admin_without_token=True).admin_without_token


async def test_reload_needs_the_admin_token_and_stays_under_the_bundle_root(tmp_path):
    root = tmp_path / "bundles"
    for name in ("current", "next"):
        (root / name).mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    loaded = []

    def load(path, cfg):
        loaded.append(path)
        return fake_model(cfg, name=path.rsplit("/", 1)[-1])

    config = server_config(bundle_dir=str(root / "current"), auth_token="data", admin_token="admin")
    async with running_server(config, load) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        admin = pb_grpc.ProtoLMAdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:  # the data-plane token is not the admin's
            await admin.Reload(pb.ReloadRequest(bundle_dir="next"), metadata=(("authorization", "Bearer data"),))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = (("authorization", "Bearer admin"),)
        messages = set()
        for probe in ("../outside", str(tmp_path / "outside"), "/etc", "no-such-bundle", "../../../../etc"):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await admin.Reload(pb.ReloadRequest(bundle_dir=probe), metadata=token)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            messages.add(error.value.details().replace(repr(probe), "PROBE"))
        assert messages == {"bundle_dir PROBE is not a bundle directory under the server's bundle root"}
        reloaded = await admin.Reload(pb.ReloadRequest(bundle_dir="next"), metadata=token)
        assert reloaded.model.name == "next" and loaded == [str(root / "current"), str(root / "next")]
        await channel.close()


async def test_metrics_port_uses_the_grpc_ports_tls(certificates):
    import ssl
    import urllib.error
    import urllib.request

    config = server_config(tls_cert=str(certificates / "server.pem"), tls_key=str(certificates / "server.key"),
                           tls_client_ca=str(certificates / "ca.pem"), metrics_host="127.0.0.1")
    async with running_server(config, lambda path, cfg: fake_model(cfg)) as server:
        plain = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            await asyncio.to_thread(urllib.request.urlopen, plain, timeout=5)
        context = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):  # no client certificate
            await asyncio.to_thread(lambda: urllib.request.urlopen(f"https://127.0.0.1:{server.metrics_port}/metrics", context=context, timeout=5).read())
        context.load_cert_chain(str(certificates / "client.pem"), str(certificates / "client.key"))
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"https://127.0.0.1:{server.metrics_port}/metrics", context=context, timeout=5).read())
        assert b"protolm_requests_in_flight" in body


# -- shutdown: NOT_SERVING for the whole drain delay, no admitted call lost, later calls UNAVAILABLE


@pytest.mark.parametrize("run", range(3))
async def test_shutdown_drains_without_losing_an_admitted_call(run):
    """32 callers loop through a shutdown: health says NOT_SERVING for the whole drain delay
    while calls are still served; afterwards every call is UNAVAILABLE (retryable), none
    CANCELLED, none failed."""
    config = server_config(max_wait_ms=1.0, drain_seconds=10.0)
    async with running_server(config, lambda path, cfg: fake_model(cfg, FakeBackend(delay_seconds=0.002))) as server:
        channel, api, health = stubs(server.port)
        outcomes: list[str] = []

        async def caller():
            while True:
                try:
                    await api.Classify(classify_request("steady traffic"), timeout=10)
                    outcomes.append("OK")
                except grpc.aio.AioRpcError as exc:
                    outcomes.append(exc.code().name)
                    return  # a real client retries elsewhere

        callers = [asyncio.ensure_future(caller()) for _ in range(32)]
        await until(lambda: outcomes.count("OK") >= 64)
        stopping = asyncio.ensure_future(server.stop(drain_delay=0.5))
        statuses, served_before = [], outcomes.count("OK")
        while not server.draining:  # the delay: NOT_SERVING, and still serving
            statuses.append((await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status)
        served_in_delay = outcomes.count("OK") - served_before
        await stopping
        await asyncio.gather(*callers)
        assert statuses and set(statuses) == {health_pb2.HealthCheckResponse.NOT_SERVING}
        assert served_in_delay > 0
        assert set(outcomes) == {"OK", "UNAVAILABLE"}, {code: outcomes.count(code) for code in set(outcomes)}
        assert outcomes.count("UNAVAILABLE") == 32  # each caller's first call after the delay
        await channel.close()


async def test_a_reload_cut_off_by_the_callers_deadline_still_finishes_and_is_logged(tmp_path, caplog):
    (tmp_path / "current").mkdir()
    (tmp_path / "next").mkdir()
    caplog.set_level(logging.INFO, logger="service.server")
    gate = threading.Event()

    def load(path, cfg):
        if path.endswith("next"):
            gate.wait(10)
        return fake_model(cfg, name=path.rsplit("/", 1)[-1])

    async with running_server(server_config(bundle_dir=str(tmp_path / "current"), admin_without_token=True), load) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        admin, api = pb_grpc.ProtoLMAdminServiceStub(channel), pb_grpc.ProtoLMServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await admin.Reload(pb.ReloadRequest(bundle_dir="next"), timeout=0.3)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: any("went away" in r.getMessage() for r in caplog.records))
        gate.set()
        await until(lambda: server.engine.model.name == "next")
        assert (await api.GetModelInfo(pb.GetModelInfoRequest())).model.name == "next"
        assert any("reloaded" in r.getMessage() for r in caplog.records)
        await channel.close()


async def test_a_reload_while_a_request_is_tokenised_does_not_fail_it(tmp_path):
    (tmp_path / "current").mkdir()
    (tmp_path / "next").mkdir()
    config = server_config(bundle_dir=str(tmp_path / "current"), admin_without_token=True)
    async with running_server(config, lambda path, cfg: fake_model(cfg, name=path.rsplit("/", 1)[-1])) as server:
        channel, api, _ = stubs(server.port)
        tokenising, release = threading.Event(), threading.Event()
        old = server.engine.model.preprocessor
        original = old.encode

        def slow_encode(inputs):
            tokenising.set()
            release.wait(10)
            return original(inputs)

        old.encode = slow_encode
        call = asyncio.ensure_future(api.Classify(classify_request("tokenised across a reload"), timeout=10))
        await until(tokenising.is_set)
        await server.reload("next")  # the old model's batcher stops taking work
        release.set()
        reply = await call
        assert reply.metadata.model_name == "next" and len(reply.results) == 1
        await channel.close()
