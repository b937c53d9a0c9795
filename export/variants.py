"""Optimised and quantised variants of the fp32 graph, each measured before it is trusted.

ONNX Runtime's own transformer optimizer and quantizer are used (what ``optimum``'s
``ORTOptimizer`` / ``ORTQuantizer`` wrap): ``optimum-onnx`` pins ``transformers<4.58``, which
would hold the training package back (see the README).

Every variant, fp32 included, is run over the validation set with ONNX Runtime on the
tokenisation the service uses; its accuracy and its argmax agreement with the PyTorch
model go into the manifest, and a variant that changes more than ``1 - min_agreement`` of
the predictions is not servable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from core.bundle import VARIANT_DEVICES, VARIANT_FILES, Variant
from core.errors import BundleError
from core.graph_inputs import encode_batch
from export.onnx_graph import head_scopes
from protolm.data import TextClassificationData
from protolm.model import ProtoLM

log = logging.getLogger(__name__)
OPTIONAL_VARIANTS = ("optimized", "int8", "fp16")
# Measured on the CPU, fp16 included: the export machine need not have a GPU. The manifest
# says so (``measured_on``); CUDA kernels round differently, so fp16 on a GPU is not
# guaranteed to give exactly the recorded figures.
MEASURE_PROVIDERS = ("CPUExecutionProvider",)


def length_sorted_batches(tokenizer, data: TextClassificationData, input_names: Sequence[str], batch_size: int) -> list[tuple[np.ndarray, dict]]:
    """(row indices, graph inputs) for the whole data set, shortest texts first so batches pad little."""
    lengths = [len(t) + (len(p) if data.is_pair else 0) for t, p in zip(data.texts, data.text_pairs or data.texts)]
    order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        pairs = [data.text_pairs[i] for i in rows] if data.is_pair else None
        batches.append((rows, encode_batch(tokenizer, [data.texts[i] for i in rows], pairs, input_names)))
    return batches


def predicted_labels(path: Path, batches: list[tuple[np.ndarray, dict]], progress: bool) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=list(MEASURE_PROVIDERS))
    labels = np.zeros(sum(len(rows) for rows, _ in batches), dtype=np.int64)
    for rows, feeds in tqdm(batches, desc=f"measure {path.name}", disable=not progress, unit="batch"):
        labels[rows] = session.run(["logits"], feeds)[0].argmax(axis=1)
    return labels


def measure(name: str, path: Path, batches, labels: np.ndarray, reference: np.ndarray, min_agreement: float, progress: bool) -> Variant:
    predicted = predicted_labels(path, batches, progress)
    agreement = float((predicted == reference).mean())
    return Variant(
        name=name,
        file=path.name,
        device=VARIANT_DEVICES[name],
        accuracy=float((predicted == labels).mean()),
        agreement=agreement,
        servable=agreement >= min_agreement,
        measured_on=MEASURE_PROVIDERS[0],
    )


def write_optimized(fp32: Path, directory: Path, names: Sequence[str], model: ProtoLM) -> list[str]:
    """Write the requested optional variants; returns their names in build order.

    int8 and fp16 are derived from the optimised graph, so asking for either builds it too.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    names = [n for n in OPTIONAL_VARIANTS if n in names]
    if not names:
        return []
    encoder = model.encoder.config
    optimized = optimize_model(str(fp32), model_type="bert", num_heads=encoder.num_attention_heads, hidden_size=encoder.hidden_size)
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    log.info("optimised graph: fused %s", fused or "nothing")
    optimized.save_model_to_file(str(directory / VARIANT_FILES["optimized"]))
    if "int8" in names:
        quantize_int8(directory / VARIANT_FILES["optimized"], directory / VARIANT_FILES["int8"], head_scopes(model))
    if "fp16" in names:
        optimized.convert_float_to_float16(keep_io_types=True)
        optimized.save_model_to_file(str(directory / VARIANT_FILES["fp16"]))
    return ["optimized", *(n for n in names if n != "optimized")]


def quantize_int8(source: Path, target: Path, fp32_scopes: Sequence[str]) -> None:
    """Dynamic int8 quantisation for the CPU: int8 weights per output channel, activations
    quantised per batch; nodes under ``fp32_scopes`` stay fp32.

    proto-lm's head stays fp32: its logits are small differences of sums over all prototype
    similarities, so quantising it costs agreement (97.0% against 98.3% with it in fp32, on
    the SST-2 test model) and saves almost no time. Per-channel weights against per-tensor:
    98.3% against 96.1%.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [node.name for node in onnx.load(str(source)).graph.node if node.name.startswith(tuple(fp32_scopes))]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a line per tensor on the root logger
    try:
        quantize_dynamic(
            source,
            target,
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep,
            # The fused contrib ops defeat ONNX shape inference; their tensors are float32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


def build_variants(
    directory: Path,
    names: Sequence[str],
    model: ProtoLM,
    batches: list[tuple[np.ndarray, dict]],
    labels: np.ndarray,
    reference: np.ndarray,
    min_agreement: float,
    progress: bool = True,
) -> list[Variant]:
    """Manifest entries for fp32 and every variant written; fails when fp32 itself disagrees."""
    fp32 = directory / VARIANT_FILES["fp32"]
    entries = [measure("fp32", fp32, batches, labels, reference, min_agreement, progress)]
    if not entries[0].servable:
        raise BundleError(
            f"{fp32.name}: its predictions agree with PyTorch on only {entries[0].agreement:.2%} of the validation set; the export is broken"
        )
    for name in write_optimized(fp32, directory, names, model):
        entries.append(measure(name, directory / VARIANT_FILES[name], batches, labels, reference, min_agreement, progress))
    for entry in entries:
        log.info("variant %-9s accuracy %.4f agreement %.4f servable %s", entry.name, entry.accuracy, entry.agreement, entry.servable)
    return entries
