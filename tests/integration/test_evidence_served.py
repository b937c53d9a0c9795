"""Explain's evidence through a real server on a real (tiny) exported bundle: the contributions
sum to the margin between the logits the served graph computed."""

import shutil

import grpc
import numpy as np
import pytest
import torch

from core.bundle import LAST_LAYER_FILE
from core.errors import BundleError
from protolm.model import load_model
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from service.loader import load_serving_model
from service.served_bundle import ServedBundle
from tests.conftest import TINY_NEGATIVE, TINY_POSITIVE
from tests.service_helpers import file_entry, reseal, running_server, server_config

TEXTS = [f"{text} number {n}" for n in range(25) for text in (TINY_POSITIVE[n % 7], TINY_NEGATIVE[n % 7])]


async def test_fifty_explanations_sum_to_the_served_margin(tiny_bundle, tiny_model_dir):
    assert len(TEXTS) == 50
    config = server_config(bundle_dir=str(tiny_bundle), variant="fp32", max_inputs_per_request=50)
    async with running_server(config, load_serving_model) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        api = pb_grpc.ProtoLMServiceStub(channel)
        reply = await api.Explain(pb.ExplainRequest(inputs=[pb.TextInput(text=t) for t in TEXTS], options=pb.ExplainOptions(top_prototypes=3)))
        await channel.close()
    exemplars = ServedBundle.load(tiny_bundle).exemplars
    model = load_model(tiny_model_dir)
    with torch.no_grad():
        logits = model(**model.tokenize(TEXTS)).logits.numpy()
    for row, result in enumerate(reply.results):
        evidence = result.evidence
        assert abs(evidence.total - evidence.margin) <= 1e-4
        top, second = np.argsort(-logits[row])[:2]
        assert evidence.margin == pytest.approx(logits[row, top] - logits[row, second], abs=1e-4)
        assert evidence.label == result.classification.label
        probabilities = {p.label: p.probability for p in result.classification.probabilities}
        assert evidence.margin == pytest.approx(np.log(probabilities[evidence.label] / probabilities[evidence.versus_label]), abs=1e-3)
        parts = [c.contribution for c in evidence.supporting] + [c.contribution for c in evidence.opposing]
        assert all(c > 0 for c in parts[: len(evidence.supporting)]) and all(c < 0 for c in parts[len(evidence.supporting):])
        for c in list(evidence.supporting) + list(evidence.opposing) + list(result.prototypes):
            exemplar = exemplars[c.prototype_id]
            assert (c.exemplar.example_id, c.exemplar.text, c.exemplar.label_id) == (exemplar.example_id, exemplar.text, exemplar.label)
            assert [w.text for w in c.exemplar.words] == [w.text for w in exemplar.words]


def test_verify_refuses_a_last_layer_that_is_not_the_graphs(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    weights = np.load(bundle / LAST_LAYER_FILE)
    np.save(bundle / LAST_LAYER_FILE, weights[::-1].copy())
    reseal(bundle, lambda manifest: manifest["files"].update({LAST_LAYER_FILE: file_entry(bundle / LAST_LAYER_FILE)}))
    with pytest.raises(BundleError, match=f"^{LAST_LAYER_FILE}: logits differ from last layer x similarities"):
        ServedBundle.load(bundle).smoke_test()


async def test_a_bundle_before_format_3_explains_without_evidence(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    (bundle / LAST_LAYER_FILE).unlink()
    reseal(bundle, lambda manifest: (manifest.update(format_version=2), manifest["files"].pop(LAST_LAYER_FILE)))
    async with running_server(server_config(bundle_dir=str(bundle)), load_serving_model) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        reply = await pb_grpc.ProtoLMServiceStub(channel).Explain(pb.ExplainRequest(inputs=[pb.TextInput(text="lovely")]))
        await channel.close()
    (result,) = reply.results
    assert not result.HasField("evidence") and len(result.prototypes) == 3
