"""The exported graph: names, dynamic axes, and parity with PyTorch at shapes other than the traced one."""

import numpy as np
import onnx
import onnxruntime
import pytest

from export.onnx_graph import TRACE_BATCH, TRACE_LENGTH, export_graph, graph_inputs
from core.errors import ConfigError
from core.bundle import GRAPH_OUTPUTS
from tests.parity import PARITY_SHAPES, assert_parity, random_inputs


@pytest.mark.parametrize(
    "options",
    [{}, {"similarity": "cosine"}, {"similarity": "log", "is_pair": True, "label_names": ("a", "b", "c")}],
    ids=["inverse", "cosine", "log-pair-3class"],
)
def test_onnx_matches_pytorch_at_untraced_shapes(make_model, tmp_path, options):
    model = make_model(**options)
    assert (TRACE_BATCH, TRACE_LENGTH) not in PARITY_SHAPES
    assert_parity(model, export_graph(model, tmp_path / "model.onnx"))


def test_graph_names_dynamic_axes_and_opset(make_model, tmp_path):
    model = make_model()
    graph = onnx.load(str(export_graph(model, tmp_path / "model.onnx")))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert {i.name: dims(i) for i in graph.graph.input} == {name: ["batch", "sequence"] for name in graph_inputs(model)}
    outputs = {o.name: dims(o) for o in graph.graph.output}
    assert list(outputs) == list(GRAPH_OUTPUTS)
    assert outputs["token_attention"] == ["batch", "sequence"]
    assert outputs["prototype_similarities"] == ["batch", model.config.num_prototypes]
    assert outputs["pooled"] == ["batch", model.hidden_size]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.graph.input)


def test_attention_is_zero_on_padding_and_probabilities_are_softmax(make_model, tmp_path):
    model = make_model()
    session = onnxruntime.InferenceSession(str(export_graph(model, tmp_path / "model.onnx")), providers=["CPUExecutionProvider"])
    feeds = random_inputs(4, 20, graph_inputs(model))
    logits, probabilities, attention, _, _ = session.run(list(GRAPH_OUTPUTS), feeds)
    assert np.all(attention[feeds["attention_mask"] == 0] == 0.0)
    np.testing.assert_allclose(attention.sum(1), 1.0, atol=1e-5)
    exp = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities, exp / exp.sum(1, keepdims=True), atol=1e-6)


def test_export_leaves_the_model_as_it_was(make_model, tmp_path):
    model = make_model()
    before = model.encoder.config._attn_implementation
    export_graph(model, tmp_path / "model.onnx")
    assert model.encoder.config._attn_implementation == before


def test_export_refuses_baselines_and_old_opsets(make_model, tmp_path):
    with pytest.raises(ConfigError, match="only proto-lm"):
        export_graph(make_model("baseline"), tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match="opset 16"):
        export_graph(make_model(), tmp_path / "model.onnx", opset=16)
