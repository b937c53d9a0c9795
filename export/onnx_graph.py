"""One ONNX graph per model: every output the service needs from one forward pass.

The legacy (TorchScript) exporter is used on purpose. Both exporters give correct dynamic
batch and sequence axes and the same numbers, but only the legacy graph of eager attention
has the MatMul/Softmax pattern ONNX Runtime's transformer optimizer fuses into ``Attention``
and ``EmbedLayerNormalization``; the dynamo graph leaves attention unfused, which is most of
what the optimised and int8 variants gain.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from core.errors import ConfigError
from protolm.model import EncoderClassifier, ProtoLM
from core.bundle import GRAPH_OUTPUTS
from core.graph_inputs import INPUT_NAMES

MIN_OPSET = 17
# The example input the exporter runs; no test uses this shape, so a shape baked into the
# graph by mistake shows up as a parity failure.
TRACE_BATCH, TRACE_LENGTH = 5, 13


class ServingGraph(nn.Module):
    """The model with the outputs of ``GRAPH_OUTPUTS``, in that order."""

    def __init__(self, model: ProtoLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        output = self.model(input_ids, attention_mask, token_type_ids)
        return (
            output.logits,
            torch.softmax(output.logits, dim=-1),
            output.token_attention,
            output.similarities,
            output.pooled,
        )


def head_scopes(model: ProtoLM) -> tuple[str, ...]:
    """Name prefixes of the nodes of proto-lm's own layers (all but the encoder): the legacy
    exporter names every node after the module path it comes from."""
    return tuple(f"/model/{name}/" for name, _ in model.named_children() if name != "encoder")


def graph_inputs(model: EncoderClassifier) -> tuple[str, ...]:
    return INPUT_NAMES if model.config.uses_token_type_ids else INPUT_NAMES[:2]


def _trace_inputs(model: EncoderClassifier) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 2000, (TRACE_BATCH, TRACE_LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1:, TRACE_LENGTH - 4 :] = 0
    inputs = (input_ids, attention_mask, torch.zeros_like(input_ids))
    return inputs[: len(graph_inputs(model))]


def export_graph(model: EncoderClassifier, path: str | Path, opset: int = MIN_OPSET) -> Path:
    """Write ``model`` as one ONNX file with dynamic ``batch`` and ``sequence`` axes."""
    if not isinstance(model, ProtoLM):
        raise ConfigError(f"only proto-lm models can be exported for serving, not {model.config.architecture!r}")
    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} is too old; the bundle needs at least {MIN_OPSET}")
    path = Path(path)
    inputs = graph_inputs(model)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in inputs}
    dynamic.update({name: {0: "batch"} for name in GRAPH_OUTPUTS})
    dynamic["token_attention"] = {0: "batch", 1: "sequence"}
    attention = model.encoder.config._attn_implementation
    model.encoder.set_attn_implementation("eager")  # see the module docstring
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX export")
            # Tracing notes that read like errors and are not: the exported graph is checked
            # against PyTorch at other shapes (tests/parity.py) and every variant is measured.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning, message=".*aten::index operator of advanced indexing")
            torch.onnx.export(
                ServingGraph(model).eval(),
                _trace_inputs(model),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=list(inputs),
                output_names=list(GRAPH_OUTPUTS),
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
    finally:
        model.encoder.set_attn_implementation(attention)
    return path
