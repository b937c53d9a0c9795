"""SmoothQuant, tried for the int8 graph (benchmarks/int8_study.py): move the activations' outlier channels into the weights.

Dynamic int8 quantises each MatMul's input with one scale for the whole tensor, so the few
hidden channels of a BERT-style encoder that run 10-100x larger than the rest (Bondarenko et
al., 2021) leave the others a handful of levels. SmoothQuant (Xiao et al., 2023) divides
every input channel ``j`` by ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` and multiplies
row ``j`` of the weights by it: the product is unchanged in exact arithmetic, and both factors
quantise with less error. ``max|X_j|`` is measured on calibration batches from the training
split. The division is one ``Mul`` per smoothed input (its consumers outside the smoothed set,
such as a residual connection, keep the original tensor), cheap next to the MatMul after it.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

SMOOTHED_OPS = ("MatMul", "Attention")  # Attention: the optimiser's fused QKV projection, weights [hidden, 3 hidden]


def smoothable_nodes(model, exclude: Iterable[str] = ()) -> list:
    """Nodes whose second input is a weight initialiser of their own: the encoder's
    projections, Attention's fused QKV included."""
    from collections import Counter

    exclude = set(exclude)
    weights = {t.name for t in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    return [node for node in model.graph.node
            if node.op_type in SMOOTHED_OPS and node.name not in exclude and len(node.input) > 1
            and node.input[1] in weights and uses[node.input[1]] == 1]


def activation_maxima(model, tensors: Sequence[str], calibration: Iterable[dict]) -> dict[str, np.ndarray]:
    """max |x| of every channel (last axis) of ``tensors`` over the calibration batches."""
    import onnx
    import onnxruntime

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in tensors if name not in present)
    session = onnxruntime.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    for feeds in calibration:
        for name, value in zip(tensors, session.run(list(tensors), feeds)):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = channel_max if name not in maxima else np.maximum(maxima[name], channel_max)
    return maxima


def smooth(model, calibration: Iterable[dict], alpha: float = 0.5, exclude: Iterable[str] = ()):
    """``model`` (an onnx.ModelProto, changed in place and returned) with the inputs of its
    smoothable nodes divided by the SmoothQuant factors and their weights multiplied by them."""
    import onnx
    from onnx import numpy_helper

    nodes = smoothable_nodes(model, exclude)
    by_input: dict[str, list] = {}
    for node in nodes:
        by_input.setdefault(node.input[0], []).append(node)
    maxima = activation_maxima(model, list(by_input), calibration)
    initializers = {t.name: t for t in model.graph.initializer}
    new_nodes = []
    for tensor, consumers in by_input.items():
        weights = [numpy_helper.to_array(initializers[node.input[1]]) for node in consumers]
        weight_max = np.concatenate([np.abs(w) for w in weights], axis=1).max(axis=1)
        factor = (np.maximum(maxima[tensor], 1e-5) ** alpha / np.maximum(weight_max, 1e-5) ** (1 - alpha)).astype(np.float32)
        factor = np.clip(factor, 1e-2, 1e2)
        for node, weight in zip(consumers, weights):
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array((weight * factor[:, None]).astype(np.float32), node.input[1]))
        smoothed = f"{tensor}/smoothed"
        inverse = f"{tensor}/smoothing_inverse"
        model.graph.initializer.append(numpy_helper.from_array((1 / factor).astype(np.float32), inverse))
        new_nodes.append((consumers, onnx.helper.make_node("Mul", [tensor, inverse], [smoothed], name=f"{tensor}/Smooth")))
        for node in consumers:
            node.input[0] = smoothed
    # Insert each Mul right before its first consumer, so the graph stays topologically sorted.
    for consumers, mul in new_nodes:
        graph_nodes = list(model.graph.node)
        position = min(graph_nodes.index(node) for node in consumers)
        model.graph.node.insert(position, mul)
    return model
