"""Optimised and quantised variants of the fp32 graph, each measured before it is trusted.

ONNX Runtime's own transformer optimizer and quantizer are used (what ``optimum``'s
``ORTOptimizer`` / ``ORTQuantizer`` wrap): ``optimum-onnx`` pins ``transformers<4.58``, which
would hold the training package back (see the README).

Every variant, fp32 included, is run over the validation set with ONNX Runtime on the
tokenisation the service uses; its accuracy, its argmax agreement with the PyTorch model,
the accuracy it lost against PyTorch and how much of fp32's explanations it keeps (top
tokens, top prototypes) go into the manifest. A variant that changes more than
``1 - min_agreement`` of the predictions, or loses more than ``max_accuracy_drop`` of
accuracy, is not servable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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
TOP_TOKENS, TOP_PROTOTYPES = 5, 3  # the explanation overlap's sizes
RECIPES = {
    "fp32": "torch.onnx.export (TorchScript), constant folding",
    "optimized": "onnxruntime.transformers optimize_model: BERT fusions",
    "int8": "optimised graph, encoder MatMuls in per-token dynamic int8 (uint8 activations scaled per token, "
            "uint8 weights per column, MatMulInteger); embeddings, fused attention and proto-lm's head in fp32",
    "fp16": "optimised graph, convert_float_to_float16(keep_io_types=True)",
}


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


@dataclass
class GraphOutputs:
    """What a graph said about the validation set: argmax, and what explanations are built from."""

    labels: np.ndarray
    token_attention: list[np.ndarray]  # per row, over its real tokens only
    similarities: np.ndarray


def graph_outputs(path: Path, batches: list[tuple[np.ndarray, dict]], progress: bool) -> GraphOutputs:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=list(MEASURE_PROVIDERS))
    total = sum(len(rows) for rows, _ in batches)
    labels, attention, similarities = np.zeros(total, dtype=np.int64), [np.zeros(0)] * total, None
    for rows, feeds in tqdm(batches, desc=f"measure {path.name}", disable=not progress, unit="batch"):
        logits, token_attention, batch_similarities = session.run(["logits", "token_attention", "prototype_similarities"], feeds)
        labels[rows] = logits.argmax(axis=1)
        if similarities is None:
            similarities = np.zeros((total, batch_similarities.shape[1]), dtype=np.float32)
        similarities[rows] = batch_similarities
        for i, row in enumerate(rows):
            attention[row] = token_attention[i, : int(feeds["attention_mask"][i].sum())]
    return GraphOutputs(labels, attention, similarities)


def predicted_labels(path: Path, batches: list[tuple[np.ndarray, dict]], progress: bool) -> np.ndarray:
    return graph_outputs(path, batches, progress).labels


def top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of ``b``'s k largest entries that are among ``a``'s k largest."""
    k = min(k, len(a))
    if k == 0:
        return 1.0
    return len(set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-b, kind="stable")[:k])) / k


def explanation_overlap(outputs: GraphOutputs, fp32: GraphOutputs) -> tuple[float, float]:
    """Mean top-token and top-prototype overlap of ``outputs``' explanations with fp32's."""
    tokens = np.mean([top_overlap(a, b, TOP_TOKENS) for a, b in zip(outputs.token_attention, fp32.token_attention)])
    prototypes = np.mean([top_overlap(a, b, TOP_PROTOTYPES) for a, b in zip(outputs.similarities, fp32.similarities)])
    return float(tokens), float(prototypes)


def measure(name: str, path: Path, batches, labels: np.ndarray, reference: np.ndarray, min_agreement: float, progress: bool,
            max_accuracy_drop: float = 1.0, fp32: GraphOutputs | None = None) -> Variant:
    """The manifest entry of one variant: servable when its predictions agree with PyTorch's
    (``reference``) on at least ``min_agreement`` of the validation set and its accuracy is at
    most ``max_accuracy_drop`` below PyTorch's; explanations are compared with ``fp32``'s."""
    return measure_outputs(name, path, batches, labels, reference, min_agreement, progress, max_accuracy_drop, fp32)[0]


def measure_outputs(name: str, path: Path, batches, labels: np.ndarray, reference: np.ndarray, min_agreement: float, progress: bool,
                    max_accuracy_drop: float = 1.0, fp32: GraphOutputs | None = None) -> tuple[Variant, GraphOutputs]:
    """:func:`measure`, and the outputs it measured."""
    outputs = graph_outputs(path, batches, progress)
    agreement = float((outputs.labels == reference).mean())
    accuracy = float((outputs.labels == labels).mean())
    drop = float((reference == labels).mean()) - accuracy
    tokens, prototypes = explanation_overlap(outputs, fp32) if fp32 is not None else (1.0, 1.0)
    variant = Variant(
        name=name,
        file=path.name,
        device=VARIANT_DEVICES[name],
        accuracy=accuracy,
        agreement=agreement,
        servable=agreement >= min_agreement and drop <= max_accuracy_drop + 1e-9,
        measured_on=MEASURE_PROVIDERS[0],
        accuracy_drop=drop,
        token_overlap=tokens,
        prototype_overlap=prototypes,
        recipe=RECIPES[name],
    )
    return variant, outputs


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
    """int8 for the CPU: every projection of the encoder (each MatMul with a weight matrix) in
    per-token dynamic int8 (``export.token_int8``); nodes under ``fp32_scopes``, the embeddings
    and the fused attention (QKV projection and softmax) stay fp32.

    Chosen by measurement (docs/results.md, "int8 on the CPU"; ``benchmarks/int8_study.py``).
    ONNX Runtime's ``quantize_dynamic`` gives each MatMul input one scale for the whole batch:
    98.4% agreement with PyTorch on SST-2 validation, under the 99% gate. One scale per token
    keeps 99.8%. Static QDQ with activation ranges calibrated on training sentences (MinMax,
    Percentile, SmoothQuant) did worse (94-95%); weight-only int8 kept 99.9% but ran at 0.6x of
    fp32 on an AVX2 CPU; reduce_range and u8 weights did not help dynamic int8. The fused
    attention stays fp32: its quantised form (QAttention) takes one scale per batch again.

    proto-lm's head stays fp32: its logits are small differences of sums over all prototype
    similarities, so quantising it costs agreement (97.0% against 98.3% with it in fp32 under
    per-batch int8, on the SST-2 test model) and saves almost no time; ``protolm bundle
    verify`` also checks every variant's logits against the fp32 last layer.
    """
    import onnx

    from export.token_int8 import rewrite

    model = onnx.load(str(source))
    weights = {t.name: len(t.dims) for t in model.graph.initializer}
    nodes = [node.name for node in model.graph.node
             if node.op_type == "MatMul" and node.name and weights.get(node.input[1]) == 2 and not node.name.startswith(tuple(fp32_scopes))]
    onnx.save(rewrite(model, nodes), str(target))


def build_variants(
    directory: Path,
    names: Sequence[str],
    model: ProtoLM,
    batches: list[tuple[np.ndarray, dict]],
    labels: np.ndarray,
    reference: np.ndarray,
    min_agreement: float,
    progress: bool = True,
    max_accuracy_drop: float = 1.0,
) -> list[Variant]:
    """Manifest entries for fp32 and every variant written; fails when fp32 itself disagrees."""
    fp32 = directory / VARIANT_FILES["fp32"]
    first, fp32_outputs = measure_outputs("fp32", fp32, batches, labels, reference, min_agreement, progress, max_accuracy_drop)
    if not first.servable:
        raise BundleError(
            f"{fp32.name}: its predictions agree with PyTorch on only {first.agreement:.2%} of the validation set "
            f"and lose {first.accuracy_drop:.2%} of accuracy; the export is broken"
        )
    entries = [first]
    for name in write_optimized(fp32, directory, names, model):
        path = directory / VARIANT_FILES[name]
        entries.append(measure(name, path, batches, labels, reference, min_agreement, progress, max_accuracy_drop, fp32_outputs))
    for entry in entries:
        log.info("variant %-9s accuracy %.4f (%+.2f points) agreement %.4f tokens kept %.3f prototypes kept %.3f servable %s", entry.name,
                 entry.accuracy, -100 * entry.accuracy_drop, entry.agreement, entry.token_overlap, entry.prototype_overlap, entry.servable)
    return entries
