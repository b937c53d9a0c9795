"""Per-token dynamic int8 for the encoder's projections (ZeroQuant-style).

``quantize_dynamic`` quantises each MatMul's input with one scale for the whole batch
tensor, so one token's outlier channel coarsens every other token of every text in the batch.
Here every token (row) gets its own symmetric scale, computed at run time, and every weight
column its own; the product runs in ``MatMulInteger`` (uint8 x uint8, zero points 128: the
AVX2 kernel without the u8 x s8 saturation) and is rescaled by the row and column scales.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def rewrite(model, nodes: Iterable[str]):
    """``model`` (onnx.ModelProto, changed in place and returned) with the named MatMuls,
    each with a 2-D weight initialiser, computed in per-token int8."""
    from onnx import TensorProto, helper, numpy_helper

    wanted = set(nodes)
    initializers = {t.name: t for t in model.graph.initializer}
    constants = {
        "token_int8/127": np.array(127, np.float32),
        "token_int8/eps": np.array(1e-8, np.float32),
        "token_int8/128.5": np.array(128.5, np.float32),
        "token_int8/128": np.array(128, np.uint8),
    }
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    quantised: dict[str, tuple[str, str]] = {}
    result = []
    for node in model.graph.node:
        if node.name not in wanted or node.op_type != "MatMul" or node.input[1] not in initializers:
            result.append(node)
            continue
        x, weight_name = node.input[0], node.input[1]
        if x not in quantised:
            p = f"{x}/token_int8"
            result += [
                helper.make_node("Abs", [x], [f"{p}/abs"], name=f"{p}/Abs"),
                helper.make_node("ReduceMax", [f"{p}/abs"], [f"{p}/max"], name=f"{p}/ReduceMax", axes=[-1], keepdims=1),
                helper.make_node("Max", [f"{p}/max", "token_int8/eps"], [f"{p}/max_eps"], name=f"{p}/Max"),
                helper.make_node("Div", ["token_int8/127", f"{p}/max_eps"], [f"{p}/inverse_scale"], name=f"{p}/InverseScale"),
                helper.make_node("Div", [f"{p}/max_eps", "token_int8/127"], [f"{p}/scale"], name=f"{p}/Scale"),
                helper.make_node("Mul", [x, f"{p}/inverse_scale"], [f"{p}/scaled"], name=f"{p}/Mul"),
                # x / scale lies in [-127, 127]; + 128.5 then Cast's truncation rounds it to [1, 255].
                helper.make_node("Add", [f"{p}/scaled", "token_int8/128.5"], [f"{p}/shifted"], name=f"{p}/Add"),
                helper.make_node("Cast", [f"{p}/shifted"], [f"{p}/quantised"], name=f"{p}/Cast", to=TensorProto.UINT8),
            ]
            quantised[x] = (f"{p}/quantised", f"{p}/scale")
        q, scale = quantised[x]
        weight = numpy_helper.to_array(initializers[weight_name]).astype(np.float32)
        column_scale = np.maximum(np.abs(weight).max(axis=0), 1e-8) / 127
        weight_q = (np.round(weight / column_scale) + 128).astype(np.uint8)
        n = node.name
        model.graph.initializer.extend([
            numpy_helper.from_array(weight_q, f"{n}/weight_u8"),
            numpy_helper.from_array(np.full(weight.shape[1], 128, np.uint8), f"{n}/weight_zero_point"),
            numpy_helper.from_array(column_scale.astype(np.float32), f"{n}/column_scale"),
        ])
        result += [
            helper.make_node("MatMulInteger", [q, f"{n}/weight_u8", "token_int8/128", f"{n}/weight_zero_point"], [f"{n}/int32"], name=f"{n}/MatMulInteger"),
            helper.make_node("Cast", [f"{n}/int32"], [f"{n}/float"], name=f"{n}/Cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{n}/float", scale], [f"{n}/row_scaled"], name=f"{n}/RowScale"),
            helper.make_node("Mul", [f"{n}/row_scaled", f"{n}/column_scale"], list(node.output), name=f"{n}/ColumnScale"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(result)
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model
