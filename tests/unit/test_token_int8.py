"""Per-token int8 MatMuls: each row of the input gets its own scale, so one large row does not coarsen the others."""

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from export.token_int8 import rewrite


def matmul_graph(weight):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/model/encoder/dense/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x):
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def test_every_token_keeps_its_own_precision():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(16, 8)).astype(np.float32)
    x = rng.normal(size=(2, 3, 16)).astype(np.float32)
    x[0, 0] *= 1000  # one outlier token
    model = rewrite(matmul_graph(weight), ["/model/encoder/dense/MatMul"])
    assert {n.op_type for n in model.graph.node} >= {"MatMulInteger"} and "MatMul" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)
    exact, quantised = x @ weight, run(model, x)
    relative = np.abs(quantised - exact).max(axis=-1) / np.abs(exact).max(axis=-1)
    assert relative.max() < 0.03  # the small tokens too: a per-batch scale would leave them ~0 levels


def test_a_token_is_quantised_the_same_whatever_else_is_in_the_batch():
    """Per-batch dynamic int8 gives a text different outputs next to different texts; per-token int8 does not."""
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(16, 8)).astype(np.float32)
    x = rng.normal(size=(3, 4, 16)).astype(np.float32)
    x[2] *= 50
    model = rewrite(matmul_graph(weight), ["/model/encoder/dense/MatMul"])
    np.testing.assert_array_equal(run(model, x)[:1], run(model, x[:1]))
