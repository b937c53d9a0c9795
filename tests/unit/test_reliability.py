"""Reliability probes: what an operator or an attacker can do to a running server.

A real server on a loopback port with the deterministic fake backend (and the real MiniLM
tokenizer); bounded loops; the tests poll for state instead of sleeping.
"""

import asyncio
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
    assert len(preprocessor.readable_prefix(CJK)) <= 50 * 8 * 4


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


async def test_a_request_larger_than_the_queue_is_invalid_and_overload_is_refused_before_tokenising():
    backend = HeldBackend(num_classes=2, num_prototypes=4)
    config = server_config(max_queue_size=4, max_inputs_per_request=4, max_batch_size=1, max_wait_ms=0.0)
    async with running_server(config, lambda path, cfg: fake_model(cfg, backend)) as server:
        channel, api, _ = stubs(server.port)
        busy = asyncio.ensure_future(api.Classify(classify_request("held in the model")))
        await until(lambda: backend.held)
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
    backend = HeldBackend(num_classes=2, num_prototypes=4)
    config = server_config(max_queue_size=8, max_inputs_per_request=1, max_batch_size=1, max_wait_ms=0.0)
    async with running_server(config, lambda path, cfg: fake_model(cfg, backend)) as server:
        channel, api, _ = stubs(server.port)
        busy = asyncio.ensure_future(api.Classify(classify_request("held in the model")))
        await until(lambda: backend.held)
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
