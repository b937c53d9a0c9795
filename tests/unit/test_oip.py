"""The Open Inference Protocol (package ``inference``) on the same port, engine and batcher as
protolm.v1: with this project's stubs, against the deterministic fake backend. The test with a
third-party client (tritonclient) and a real bundle is tests/integration/test_oip_client.py."""

import asyncio
import struct
import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc_api import grpc_predict_v2_pb2 as oip
from service.grpc_api import grpc_predict_v2_pb2_grpc as oip_grpc
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from tests.service_helpers import fake_model, running_server, server_config, until

Tensor = oip.ModelInferRequest.InferInputTensor
TEXTS = ["a good film", "a bad film that goes on and on", "fine", "naïve, but a warm 🎬 film"]


def text_tensor(texts, name="text", datatype="BYTES", shape=None):
    return Tensor(name=name, datatype=datatype, shape=shape or [len(texts)], contents=oip.InferTensorContents(bytes_contents=[t.encode() for t in texts]))


def raw_bytes(texts) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def infer_request(*tensors, model="fake", raw=(), **parameters):
    request = oip.ModelInferRequest(model_name=model, inputs=tensors, raw_input_contents=list(raw))
    for key, value in parameters.items():
        field = {bool: "bool_param", int: "int64_param", str: "string_param"}[type(value)]
        setattr(request.parameters[key], field, value)
    return request


def output(response, name):
    """An output tensor as a numpy array, from typed or raw contents."""
    index = [o.name for o in response.outputs].index(name)
    tensor = response.outputs[index]
    if response.raw_output_contents:
        raw = response.raw_output_contents[index]
        if tensor.datatype == "BYTES":
            items, position = [], 0
            while position < len(raw):
                (size,) = struct.unpack_from("<I", raw, position)
                items.append(raw[position + 4 : position + 4 + size])
                position += 4 + size
            return np.array(items, dtype=object).reshape(tensor.shape)
        return np.frombuffer(raw, {"FP32": "<f4", "INT32": "<i4", "INT64": "<i8"}[tensor.datatype]).reshape(tensor.shape)
    contents = tensor.contents
    values = {"BYTES": contents.bytes_contents, "FP32": contents.fp32_contents, "INT32": contents.int_contents, "INT64": contents.int64_contents}[tensor.datatype]
    return np.array(list(values), dtype=object if tensor.datatype == "BYTES" else None).reshape(tensor.shape)


def stubs(port):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, oip_grpc.GRPCInferenceServiceStub(channel), pb_grpc.ProtoLMServiceStub(channel)


@pytest.mark.parametrize("raw", [False, True], ids=["typed-contents", "raw-contents"])
async def test_infer_gives_protolm_v1s_labels_probabilities_and_explanations(raw):
    async with running_server(server_config(), lambda path, cfg: fake_model(cfg)) as server:
        channel, infer, api = stubs(server.port)
        if raw:
            request = infer_request(Tensor(name="text", datatype="BYTES", shape=[len(TEXTS), 1]), raw=[raw_bytes(TEXTS)], explain=True, top_prototypes=2)
        else:
            request = infer_request(text_tensor(TEXTS), explain=True, top_prototypes=2)
        request.id = "call-7"
        response = await infer.ModelInfer(request, metadata=(("x-request-id", "req-7"),))
        assert bool(response.raw_output_contents) == raw  # answered in the form it was asked
        assert (response.model_name, response.model_version, response.id) == ("fake", "1", "call-7")
        assert response.parameters["request_id"].string_param == "req-7"
        assert response.parameters["labels"].string_param == '["negative", "positive"]'

        classified = await api.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text=t) for t in TEXTS]))
        explained = await api.Explain(pb.ExplainRequest(inputs=[pb.TextInput(text=t) for t in TEXTS], options=pb.ExplainOptions(top_prototypes=2)))
        assert [label.decode() for label in output(response, "label")] == [r.label for r in classified.results]
        probabilities = np.array([[p.probability for p in r.probabilities] for r in classified.results])
        np.testing.assert_allclose(output(response, "probabilities").astype(float), probabilities, rtol=1e-6)
        counts = output(response, "token_counts")
        for row, (text, expected) in enumerate(zip(TEXTS, explained.results)):
            n = counts[row]
            assert n == len(expected.weights)
            offsets = output(response, "token_offsets")[row, :n]
            assert [text[start:end] for start, end in offsets] == [w.text for w in expected.weights]  # code points, not bytes
            np.testing.assert_allclose(output(response, "token_weights")[row, :n].astype(float), [w.weight for w in expected.weights], rtol=1e-6)
            assert (output(response, "token_segments")[row, :n] == 0).all() and (output(response, "token_segments")[row, n:] == -1).all()
            assert (output(response, "token_offsets")[row, n:] == -1).all()
            assert list(output(response, "prototype_ids")[row]) == [p.prototype_id for p in expected.prototypes]
            assert [b.decode() for b in output(response, "prototype_labels")[row]] == [p.label for p in expected.prototypes]
            assert list(output(response, "exemplar_ids")[row]) == [p.exemplar.example_id for p in expected.prototypes]
            np.testing.assert_allclose(output(response, "prototype_similarities")[row].astype(float), [p.similarity for p in expected.prototypes], rtol=1e-6)

        plain = await infer.ModelInfer(infer_request(text_tensor(TEXTS)))
        assert [o.name for o in plain.outputs] == ["label", "probabilities"]  # no explanation unless asked
        chosen = infer_request(text_tensor(TEXTS), explain=True)
        chosen.outputs.add(name="exemplar_ids")
        chosen.outputs.add(name="label")
        assert [o.name for o in (await infer.ModelInfer(chosen)).outputs] == ["exemplar_ids", "label"]
        await channel.close()


def _with_raw_and_contents():
    request = infer_request(text_tensor(["a"]), raw=[raw_bytes(["a"])])
    return request


def _requesting(name, **parameters):
    request = infer_request(text_tensor(["a"]), **parameters)
    request.outputs.add(name=name)
    return request


BAD_REQUESTS = [
    (infer_request(text_tensor(["a"], datatype="FP32")), "input text has datatype FP32; it must be BYTES"),
    (infer_request(text_tensor(["a"], name="text_pair")), "the request has no 'text' input tensor"),
    (infer_request(), "the request has no 'text' input tensor"),
    (infer_request(text_tensor(["a", "b"], shape=[3])), "input text has shape [3] but 2 elements"),
    (infer_request(text_tensor(["a", "b"], shape=[1, 2])), "input text has shape [1, 2]; send [N] or [N, 1]"),
    (infer_request(text_tensor(["a"], name="sentence")), "unknown input 'sentence'"),
    (infer_request(text_tensor(["a"]), text_tensor(["b"])), "input text is sent twice"),
    (infer_request(text_tensor(["a"]), text_tensor(["b"], name="text_pair")), "this model classifies single texts"),
    (infer_request(text_tensor([], shape=[0])), "inputs is empty"),
    (infer_request(Tensor(name="text", datatype="BYTES", shape=[1]), raw=[b"\x05\x00\x00\x00abc"]), "raw contents end inside an element"),
    (infer_request(Tensor(name="text", datatype="BYTES", shape=[1]), raw=[b"\x01\x00"]), "raw contents end inside an element's 4-byte length"),
    (infer_request(Tensor(name="text", datatype="BYTES", shape=[1]), raw=[raw_bytes(["a"]), raw_bytes(["b"])]), "2 raw_input_contents for 1 inputs"),
    (_with_raw_and_contents(), "input text has contents although the request uses raw_input_contents"),
    (infer_request(Tensor(name="text", datatype="BYTES", shape=[1], contents=oip.InferTensorContents(bytes_contents=[b"\xff\xfe"]))), "not valid UTF-8"),
    (_requesting("token_weights"), "output token_weights is an explanation: set the request parameter explain = true"),
    (_requesting("logits"), "unknown output 'logits'"),
    (infer_request(text_tensor(["a"]), explain="yes"), "parameter explain must be a bool_param"),
    (infer_request(text_tensor(["a"]), explain=True, granularity="sentence"), "parameter granularity is 'sentence'"),
    (infer_request(text_tensor(["a"]), explain=True, top_prototypes=-1), "parameter top_prototypes is -1"),
    (infer_request(text_tensor(["a"]), explain=True, top_prototypes=1000), "top_prototypes is 1000; the limit is"),
    (infer_request(text_tensor(["x"] * 5)), "5 inputs in one call; the limit is 4"),
]


async def test_bad_input_is_invalid_argument_and_the_server_keeps_serving():
    """Wrong datatype, missing or unknown tensors, shapes that do not match the contents, bad
    raw encodings, bad parameters and outputs: each INVALID_ARGUMENT with its reason."""
    async with running_server(server_config(max_inputs_per_request=4), lambda path, cfg: fake_model(cfg)) as server:
        channel, infer, _ = stubs(server.port)
        for request, message in BAD_REQUESTS:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await infer.ModelInfer(request)
            assert (error.value.code(), message in error.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, True), (message, error.value.details())
        assert len((await infer.ModelInfer(infer_request(text_tensor(["still serving"])))).outputs) == 2
        await channel.close()


async def test_pair_models_take_text_pair_and_list_it_in_their_metadata():
    async with running_server(server_config(), lambda path, cfg: fake_model(cfg, is_pair=True)) as server:
        channel, infer, api = stubs(server.port)
        response = await infer.ModelInfer(infer_request(text_tensor(["a cat sat"]), text_tensor(["a cat is sitting"], name="text_pair"), explain=True))
        classified = await api.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text="a cat sat", text_pair="a cat is sitting")]))
        assert output(response, "label")[0].decode() == classified.results[0].label
        n = output(response, "token_counts")[0]
        assert set(output(response, "token_segments")[0, :n]) == {0, 1}
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await infer.ModelInfer(infer_request(text_tensor(["a", "b"]), text_tensor(["c"], name="text_pair")))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 texts but 1 text_pairs" in error.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await infer.ModelInfer(infer_request(text_tensor(["a"])))
        assert "send a 'text_pair' tensor too" in error.value.details()
        metadata = await infer.ModelMetadata(oip.ModelMetadataRequest(name="fake"))
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("text", "BYTES", [-1]), ("text_pair", "BYTES", [-1])]
        await channel.close()


async def test_metadata_and_an_unknown_model_or_version():
    async with running_server(server_config(), lambda path, cfg: fake_model(cfg, name="sst2-protolm")) as server:
        channel, infer, _ = stubs(server.port)
        metadata = await infer.ModelMetadata(oip.ModelMetadataRequest(name="sst2-protolm"))
        assert (metadata.name, list(metadata.versions), metadata.platform) == ("sst2-protolm", ["1"], "onnxruntime_onnx")
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("text", "BYTES", [-1])]
        shapes = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
        assert shapes["label"] == ("BYTES", [-1]) and shapes["probabilities"] == ("FP32", [-1, 2])
        assert shapes["token_offsets"] == ("INT32", [-1, -1, 2]) and shapes["exemplar_ids"] == ("INT64", [-1, -1])
        server_metadata = await infer.ServerMetadata(oip.ServerMetadataRequest())
        assert server_metadata.name == "protolm" and server_metadata.version
        for call in (
            infer.ModelMetadata(oip.ModelMetadataRequest(name="other")),
            infer.ModelMetadata(oip.ModelMetadataRequest(name="sst2-protolm", version="2")),
            infer.ModelInfer(infer_request(text_tensor(["a"]), model="other")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            assert "this server serves 'sst2-protolm' version '1'" in error.value.details()
        assert (await infer.ModelReady(oip.ModelReadyRequest(name="sst2-protolm", version="1"))).ready
        assert not (await infer.ModelReady(oip.ModelReadyRequest(name="other"))).ready
        assert not (await infer.ModelReady(oip.ModelReadyRequest(name="sst2-protolm", version="2"))).ready
        await channel.close()


async def test_server_ready_and_model_ready_agree_with_grpc_health():
    """NOT_SERVING while loading, SERVING once warm, NOT_SERVING through the drain delay and
    after it: the probes answer as grpc.health.v1 does, without a token, even while draining."""
    gate = asyncio.Event()
    loading = threading.Event()
    loop = asyncio.get_running_loop()

    def slow_load(path, cfg):
        loading.set()
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(10)
        return fake_model(cfg)

    from service.server import ProtoLMServer

    server = ProtoLMServer(server_config(auth_token="secret"), load_model=slow_load)
    starting = asyncio.create_task(server.start())
    await until(loading.is_set)
    channel, infer, _ = stubs(server.port)
    health = health_pb2_grpc.HealthStub(channel)

    async def states():
        serving = (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        oip_serving = (await health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))).status
        return (
            serving,
            oip_serving == health_pb2.HealthCheckResponse.SERVING,
            (await infer.ServerReady(oip.ServerReadyRequest())).ready,
            (await infer.ModelReady(oip.ModelReadyRequest(name="fake"))).ready,
            (await infer.ServerLive(oip.ServerLiveRequest())).live,
        )

    assert await states() == (False, False, False, False, True)
    gate.set()
    await starting
    assert await states() == (True, True, True, True, True)
    with pytest.raises(grpc.aio.AioRpcError) as error:  # the probes are open; inference is not
        await infer.ModelInfer(infer_request(text_tensor(["a"])))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    token = (("authorization", "Bearer secret"),)
    assert len((await infer.ModelInfer(infer_request(text_tensor(["a"])), metadata=token)).outputs) == 2
    codes = []

    async def traffic():  # calls keep arriving, so the draining server keeps its listener open
        while True:
            try:
                await infer.ModelInfer(infer_request(text_tensor(["steady traffic"])), metadata=token, timeout=5)
                codes.append("OK")
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code().name)
            await asyncio.sleep(0.02)

    caller = asyncio.create_task(traffic())
    stopping = asyncio.create_task(server.stop(grace=5.0, drain_delay=0.3))
    await until(lambda: not server.serving)
    assert await states() == (False, False, False, False, True)  # the delay: still serving
    assert len((await infer.ModelInfer(infer_request(text_tensor(["served in the delay"])), metadata=token)).outputs) == 2
    await until(lambda: server.draining and "UNAVAILABLE" in codes)
    assert await states() == (False, False, False, False, True)  # probes answer; inference is refused
    caller.cancel()
    await stopping
    await channel.close()


async def test_reflection_lists_the_inference_service():
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with running_server(server_config(), lambda path, cfg: fake_model(cfg)) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in (await call.read()).list_services_response.service}
        assert "inference.GRPCInferenceService" in names
        await call.done_writing()
        await channel.close()
