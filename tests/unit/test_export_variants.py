"""Optimised, int8 and fp16 variants: built from the fp32 graph, measured, and gated on agreement."""

import numpy as np
import onnx
import pytest

from export.bundle_writer import write_tokenizer
from export.onnx_graph import export_graph, graph_inputs
from export.variants import build_variants, length_sorted_batches, measure, predicted_labels, top_overlap, write_optimized
from protolm.data import TextClassificationData
from core.errors import BundleError
from protolm.inference import predict
from core.bundle import VARIANT_FILES

WORDS = ["good", "bad", "great fun", "awful", "fine", "dull", "lovely film", "weak plot"]


@pytest.fixture
def exported(make_model, tmp_path):
    model = make_model()
    export_graph(model, tmp_path / VARIANT_FILES["fp32"])
    tokenizer = write_tokenizer(model, tmp_path)
    texts = [f"{WORDS[i % len(WORDS)]} and {WORDS[(3 * i) % len(WORDS)]} {i}" for i in range(100)]
    data = TextClassificationData(texts, None, np.arange(100) % 2, ["negative", "positive"], "demo:validation")
    batches = length_sorted_batches(tokenizer, data, graph_inputs(model), batch_size=16)
    return model, data, batches


def test_batches_cover_every_row_once(exported):
    _, data, batches = exported
    rows = np.concatenate([rows for rows, _ in batches])
    assert sorted(rows.tolist()) == list(range(len(data)))


def test_agreement_gates_servable(exported, tmp_path):
    model, data, batches = exported
    fp32 = tmp_path / VARIANT_FILES["fp32"]
    reference = predicted_labels(fp32, batches, progress=False)
    assert (reference == predict(model, data, progress=False).labels).all()
    flipped = reference.copy()
    flipped[:2] = 1 - flipped[:2]
    strict = measure("fp32", fp32, batches, data.labels, flipped, min_agreement=0.99, progress=False)
    assert strict.agreement == pytest.approx(0.98)
    assert not strict.servable
    assert measure("fp32", fp32, batches, data.labels, flipped, min_agreement=0.98, progress=False).servable
    assert strict.accuracy == pytest.approx(float((reference == data.labels).mean()))


def test_accuracy_lost_gates_servable_too(exported, tmp_path):
    """Agreement is not enough: a variant whose flips cost more than max_accuracy_drop of accuracy is refused."""
    _, _, batches = exported
    fp32 = tmp_path / VARIANT_FILES["fp32"]
    predicted = predicted_labels(fp32, batches, progress=False)
    reference = predicted.copy()
    reference[:2] = 1 - reference[:2]  # PyTorch right where this graph is wrong: 98% agreement, 2 points lost
    lossy = measure("fp32", fp32, batches, reference, reference, min_agreement=0.98, progress=False, max_accuracy_drop=0.01)
    assert lossy.agreement == pytest.approx(0.98) and lossy.accuracy_drop == pytest.approx(0.02)
    assert not lossy.servable
    assert measure("fp32", fp32, batches, reference, reference, min_agreement=0.98, progress=False, max_accuracy_drop=0.02).servable


def test_explanation_overlap_counts_shared_top_entries():
    assert top_overlap(np.array([0.9, 0.8, 0.1, 0.0]), np.array([0.9, 0.0, 0.8, 0.1]), 2) == 0.5
    assert top_overlap(np.array([0.3, 0.2]), np.array([0.2, 0.3]), 5) == 1.0  # k capped at the length


def test_export_fails_when_fp32_disagrees_with_pytorch(exported, tmp_path):
    model, data, batches = exported
    wrong = 1 - predicted_labels(tmp_path / VARIANT_FILES["fp32"], batches, progress=False)
    with pytest.raises(BundleError, match="model.onnx"):
        build_variants(tmp_path, [], model, batches, data.labels, wrong, 0.99, progress=False)


def test_variants_are_fused_quantised_and_half_precision(exported, tmp_path):
    model, data, batches = exported
    names = write_optimized(tmp_path / VARIANT_FILES["fp32"], tmp_path, ["int8", "fp16"], model)
    assert names == ["optimized", "int8", "fp16"]
    ops = {name: {node.op_type for node in onnx.load(str(tmp_path / VARIANT_FILES[name])).graph.node} for name in names}
    assert {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization"} <= ops["optimized"]
    # per-token int8 projections; the fused attention and the embeddings stay fp32
    assert {"MatMulInteger", "Attention", "EmbedLayerNormalization"} <= ops["int8"] and "DynamicQuantizeLinear" not in ops["int8"]
    int8_nodes = {node.name: node.op_type for node in onnx.load(str(tmp_path / VARIANT_FILES["int8"])).graph.node}
    assert int8_nodes["/model/prototypes/MatMul"] == int8_nodes["/model/classifier/MatMul"] == "MatMul"  # the head stays fp32
    fp16 = onnx.load(str(tmp_path / VARIANT_FILES["fp16"]))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    assert [i.type.tensor_type.elem_type for i in fp16.graph.output] == [onnx.TensorProto.FLOAT] * 5
    reference = predict(model, data, progress=False).labels
    entries = build_variants(tmp_path, ["optimized", "int8", "fp16"], model, batches, data.labels, reference, 0.9, progress=False)
    assert [e.name for e in entries] == ["fp32", "optimized", "int8", "fp16"]
    assert [e.device for e in entries] == ["any", "any", "cpu", "gpu"]
    assert entries[0].agreement == 1.0 and entries[1].agreement == 1.0
    assert entries[1].token_overlap >= 0.9 and entries[1].prototype_overlap >= 0.9  # fusion only reorders float sums
    assert all(0 <= e.token_overlap <= 1 and 0 <= e.prototype_overlap <= 1 and e.recipe for e in entries)
    assert entries[0].accuracy_drop == 0.0
