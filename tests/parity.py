"""ONNX-versus-PyTorch parity checks shared by the fast (tiny model) and slow (MiniLM) tests."""

from __future__ import annotations

import numpy as np
import onnxruntime
import torch

from export.onnx_graph import ServingGraph, graph_inputs
from core.bundle import GRAPH_OUTPUTS

PARITY_SHAPES = [(1, 7), (3, 33), (16, 128)]
TOLERANCE = 1e-4


def random_inputs(batch: int, length: int, names, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids with ragged right padding (row i loses 3*i positions, keeping at least 2)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, size=(batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    for row in range(batch):
        mask[row, max(2, length - 3 * row) :] = 0
    types = np.zeros_like(ids)
    types[:, length // 2 :] = 1
    arrays = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types * mask}
    return {name: arrays[name] for name in names}


def assert_parity(model, path, shapes=PARITY_SHAPES, tolerance=TOLERANCE) -> None:
    """Every output of the graph at ``path`` equals PyTorch's within ``tolerance`` at ``shapes``."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, length in shapes:
        feeds = random_inputs(batch, length, graph_inputs(model), seed=batch)
        with torch.no_grad():
            expected = ServingGraph(model.eval())(*(torch.from_numpy(feeds[n]) for n in graph_inputs(model)))
        got = session.run(list(GRAPH_OUTPUTS), feeds)
        for name, value, reference in zip(GRAPH_OUTPUTS, got, expected):
            assert value.shape == tuple(reference.shape), (name, batch, length)
            np.testing.assert_allclose(value, reference.numpy(), atol=tolerance, rtol=0, err_msg=f"{name} at {batch}x{length}")
