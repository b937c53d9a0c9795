"""The real server on a loopback port, serving a bundle exported from a real trained model."""

import os
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from protolm.data import DataSource, load_split
from protolm.inference import forward_texts
from protolm.model import ProtoLM
from service.client import ProtoLMClient
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from tests.service_helpers import running_server, server_config

pytestmark = pytest.mark.slow
SENTENCES = 64


@pytest.fixture(scope="module")
def sentences(shared_data_dir):
    data = load_split(DataSource(task="sst2", data_dir=str(shared_data_dir)), "validation")
    return data.texts[:SENTENCES]


@pytest.fixture(scope="module")
def reference(trained_sst2_model, sentences):
    model = ProtoLM.from_pretrained(trained_sst2_model[0])
    encoded, output = forward_texts(model, sentences)
    return {
        "probabilities": output.logits.softmax(-1).numpy(),
        "attention": output.token_attention.numpy(),
        "similarities": output.similarities.numpy(),
        "lengths": encoded["attention_mask"].sum(1).numpy(),
    }


def real_loader(path, config):
    from service.loader import load_serving_model

    return load_serving_model(path, config)


async def test_fp32_service_matches_pytorch(exported_sst2_bundle, sentences, reference):
    config = server_config(bundle_dir=str(exported_sst2_bundle), variant="fp32", max_inputs_per_request=SENTENCES)
    async with running_server(config, real_loader) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        api = pb_grpc.ProtoLMServiceStub(channel)
        inputs = [pb.TextInput(text=t) for t in sentences]
        classified = await api.Classify(pb.ClassifyRequest(inputs=inputs))
        served = np.array([[p.probability for p in r.probabilities] for r in classified.results])
        np.testing.assert_allclose(served, reference["probabilities"], atol=1e-4)
        assert [r.label_id for r in classified.results] == reference["probabilities"].argmax(1).tolist()

        explained = await api.Explain(pb.ExplainRequest(inputs=inputs, options=pb.ExplainOptions(top_prototypes=3, nearest_examples=2, granularity=pb.WEIGHT_GRANULARITY_TOKEN)))
        for row, result in enumerate(explained.results):
            assert result.classification.label_id == classified.results[row].label_id
            length = reference["lengths"][row]
            real_tokens = reference["attention"][row, 1 : length - 1]  # without [CLS] and [SEP]
            np.testing.assert_allclose([w.weight for w in result.weights], real_tokens, atol=1e-4)
            top = np.argsort(-reference["similarities"][row], kind="stable")[:3]
            assert [p.prototype_id for p in result.prototypes] == top.tolist()
            assert all(p.exemplar.text for p in result.prototypes)
            assert len(result.nearest_examples) == 2
            assert result.nearest_examples[0].distance <= result.nearest_examples[1].distance
            assert result.nearest_examples[0].split
        info = (await api.GetModelInfo(pb.GetModelInfoRequest())).model
        assert info.variant == "fp32" and info.execution_provider == "CPUExecutionProvider"
        assert info.metrics["accuracy"] >= 0.8
        await channel.close()


async def test_default_cpu_variant_agrees_with_pytorch(exported_sst2_bundle, sentences, reference):
    config = server_config(bundle_dir=str(exported_sst2_bundle), max_inputs_per_request=SENTENCES)
    async with running_server(config, real_loader) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        api = pb_grpc.ProtoLMServiceStub(channel)
        response = await api.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text=t) for t in sentences]))
        agreement = np.mean([r.label_id for r in response.results] == reference["probabilities"].argmax(1))
        assert agreement >= 0.95
        long = await api.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text="great " * 400)]))
        assert long.results[0].truncated and long.results[0].num_tokens == 50
        await channel.close()


def _wait_serving(client: ProtoLMClient, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited during start-up"
        try:
            if client.health() == "SERVING":
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not report SERVING in time")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _calls_in_flight(metrics_port: int) -> float:
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    prefix = 'protolm_requests_in_flight{method="Classify"}'
    return next((float(line.split()[-1]) for line in body.splitlines() if line.startswith(prefix)), 0.0)


def test_protolm_serve_process_drains_in_flight_requests_on_sigterm(exported_sst2_bundle, sentences):
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "PROTOLM_BUNDLE_DIR": str(exported_sst2_bundle), "PROTOLM_HOST": "127.0.0.1", "PROTOLM_PORT": str(port),
           "PROTOLM_METRICS_PORT": str(metrics_port), "PROTOLM_MAX_WAIT_MS": "50"}
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "serve"], env=env)
    try:
        with ProtoLMClient(f"127.0.0.1:{port}") as client:
            _wait_serving(client, process)
            futures = [client.stub.Classify.future(pb.ClassifyRequest(inputs=[pb.TextInput(text=t) for t in sentences[:32]]), timeout=60) for _ in range(8)]
            deadline = time.monotonic() + 30
            # SIGTERM once the server is handling all 8 calls: gRPC cancels calls that reached
            # the socket but not yet the application when shutdown starts.
            while _calls_in_flight(metrics_port) < 8:
                assert time.monotonic() < deadline, "the server did not take the calls in"
                time.sleep(0.005)
            assert not all(f.done() for f in futures)
            process.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
            assert all(len(r.results) == 32 for r in results)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
