"""A third-party Open Inference Protocol client against a live protolm server.

Triton's Python gRPC client (``tritonclient[grpc]``, its own stubs and codecs) runs in a
virtual environment of its own, because it pins protobuf < 7 and protolm needs 7: the test
builds it once at ``.venv-oip`` (or uses the interpreter in ``PROTOLM_OIP_CLIENT_PYTHON``).
Where it cannot be built (no package index) the test skips with the reason, except under CI
(CI=true), where it fails. The server serves a real bundle exported from a tiny trained model;
the client's labels on 100 sentences must be protolm.v1 Classify's, and its explanation
tensors protolm.v1 Explain's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from tests.conftest import TINY_NEGATIVE, TINY_POSITIVE
from tests.service_helpers import running_server, server_config

pytestmark = pytest.mark.slow  # installs tritonclient from the package index the first time
REPO = Path(__file__).resolve().parents[2]
CLIENT_VENV = REPO / ".venv-oip"
CLIENT_REQUIREMENT = "tritonclient[grpc]==2.73.0"
CLIENT_SCRIPT = Path(__file__).with_name("oip_tritonclient.py")
CHUNK = 50  # protolm.v1 calls (within the server's 64 inputs per call)


def hundred_sentences() -> list[str]:
    """100 distinct sentences of both sentiments, with accents and an emoji (offsets are code points)."""
    templates = ["{}", "a {} story", "{}, they said", "naïve but {} 🎬", "not {} at all"]
    words = TINY_POSITIVE + TINY_NEGATIVE + ["so-so", "moving", "predictable", "charming", "tedious", "fresh"]
    sentences = [template.format(word) for template in templates for word in words]
    return sentences[:100]


def _skip_or_fail(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"under CI the OIP client environment must build: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def oip_client_python() -> str:
    """The interpreter of a virtual environment holding tritonclient[grpc] and nothing of protolm."""
    given = os.environ.get("PROTOLM_OIP_CLIENT_PYTHON")
    if given:
        return given
    python = CLIENT_VENV / "bin" / "python"
    marker = CLIENT_VENV / ".installed"
    if marker.exists() and marker.read_text() == CLIENT_REQUIREMENT:
        return str(python)
    building = REPO / f".venv-oip.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(building)], check=True, capture_output=True, timeout=120)
        # pip from this environment installs into the new one, so no ensurepip is needed
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(building / "bin" / "python"), "install", "--quiet", CLIENT_REQUIREMENT],
            check=True, capture_output=True, text=True, timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        shutil.rmtree(building, ignore_errors=True)
        _skip_or_fail(f"cannot build the OIP client environment with {CLIENT_REQUIREMENT}: {getattr(error, 'stderr', '') or error}")
    (building / ".installed").write_text(CLIENT_REQUIREMENT)
    shutil.rmtree(CLIENT_VENV, ignore_errors=True)
    building.rename(CLIENT_VENV)
    return str(python)


def real_loader(path, config):
    from service.loader import load_serving_model

    return load_serving_model(path, config)


async def test_tritonclient_labels_equal_protolm_v1_classify_on_100_sentences(tiny_bundle, oip_client_python, tmp_path):
    sentences = hundred_sentences()
    assert len(set(sentences)) == 100
    sentences_file = tmp_path / "sentences.json"
    sentences_file.write_text(json.dumps(sentences, ensure_ascii=False), encoding="utf-8")
    config = server_config(bundle_dir=str(tiny_bundle), variant="fp32")
    async with running_server(config, real_loader) as server:
        model = server.engine.current_model()
        client = await asyncio.create_subprocess_exec(
            # -I: isolated, so nothing of this repository or environment is importable there
            oip_client_python, "-I", str(CLIENT_SCRIPT), f"127.0.0.1:{server.port}", model.name, str(sentences_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        )
        stdout, stderr = await asyncio.wait_for(client.communicate(), timeout=300)
        assert client.returncode == 0, stderr.decode()[-3000:]
        report = json.loads(stdout)

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        api = pb_grpc.ProtoLMServiceStub(channel)
        classified, explained = [], []
        for start in range(0, len(sentences), CHUNK):
            inputs = [pb.TextInput(text=t) for t in sentences[start : start + CHUNK]]
            classified += (await api.Classify(pb.ClassifyRequest(inputs=inputs))).results
            explained += (await api.Explain(pb.ExplainRequest(inputs=inputs, options=pb.ExplainOptions(top_prototypes=3)))).results
        await channel.close()

    assert (report["live"], report["ready"], report["model_ready"], report["other_model_ready"]) == (True, True, True, False)
    metadata = report["metadata"]
    assert metadata["name"] == model.name and metadata["versions"] == [model.version]
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [("text", "BYTES")]
    outputs = {t["name"]: t["datatype"] for t in metadata["outputs"]}
    assert outputs["label"] == "BYTES" and outputs["probabilities"] == "FP32" and outputs["exemplar_ids"] == "INT64"
    assert report["server_metadata"]["name"] == "protolm"

    assert report["labels"] == [r.label for r in classified]  # the acceptance check: 100 of 100
    assert set(report["labels"]) == set(model.labels)  # both classes occur (59 / 41 here), so equality says something
    np.testing.assert_allclose(report["probabilities"], [[p.probability for p in r.probabilities] for r in classified], rtol=1e-6)
    assert len(report["explanations"]) == 100
    for sentence, got, expected in zip(sentences, report["explanations"], explained):
        assert got["label"] == expected.classification.label
        assert [sentence[start:end] for start, end in got["token_offsets"]] == [w.text for w in expected.weights]
        np.testing.assert_allclose(got["token_weights"], [w.weight for w in expected.weights], rtol=1e-6)
        assert set(got["token_segments"]) == {0}
        assert got["prototype_ids"] == [p.prototype_id for p in expected.prototypes]
        assert got["prototype_labels"] == [p.label for p in expected.prototypes]
        assert got["exemplar_ids"] == [p.exemplar.example_id for p in expected.prototypes]
        np.testing.assert_allclose(got["prototype_similarities"], [p.similarity for p in expected.prototypes], rtol=1e-6)
    status, message = report["wrong_datatype"]
    assert status == "StatusCode.INVALID_ARGUMENT" and "it must be BYTES" in message
