"""``protolm report BUNDLE_DIR``: the report of a serving bundle, gathered without torch.

The evaluation is the manifest's (bundles exported before it recorded the confusion matrix
have none: the report says so), the
prototypes are the exemplars and the last layer, the 2-D map reads a sample of the training
encodings back out of the example index and the prototypes out of the prototype index, and
the explained examples go through the service's own engine and ONNX graph, no server needed.
A bundle holds no validation data, so those examples are training rows, and the report says
that too. Rendering is ``core.report``'s.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np

from core.explanation import DEFAULT_TOP_PROTOTYPES
from core.report import (
    EncodingMap,
    Evaluation,
    ExplainedExample,
    ModelReport,
    ReportConfig,
    encoding_map,
    report_prototypes,
    sample_ids,
)
from service.served_bundle import ServedBundle

log = logging.getLogger(__name__)


def reconstruct(index, ids: np.ndarray) -> np.ndarray:
    """The stored vectors of ``ids`` from a FAISS index (flat, IVF or HNSW); raises
    RuntimeError when the index cannot give them back."""
    import faiss

    if hasattr(faiss, "try_extract_index_ivf") and faiss.try_extract_index_ivf(index) is not None:
        faiss.extract_index_ivf(index).make_direct_map()
    return np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, index.d), dtype=np.float32)


def _map(bundle: ServedBundle, config: ReportConfig, notes: list[str]) -> EncodingMap | None:
    try:
        examples = bundle.example_index()
        ids = sample_ids(examples.ntotal, config.map_sample, config.seed)
        encodings = reconstruct(examples, ids)
        prototype_vectors = bundle.prototype_vectors
    except RuntimeError as exc:
        notes.append(f"The indexes do not give their vectors back ({exc}), so there is no map of the training encodings.")
        return None
    store = bundle.examples()
    try:
        labels = np.array([store[int(i)].label for i in ids], dtype=np.int64)
    finally:
        store.close()
    return encoding_map(encodings, labels, prototype_vectors, examples.ntotal)


async def _explain(bundle_dir: Path, inputs):
    from service.config import ServerConfig
    from service.engine import Engine, ExplainOptions
    from service.loader import load_serving_model
    from service.metrics import Metrics

    config = ServerConfig(bundle_dir=str(bundle_dir), device="cpu", max_inputs_per_request=max(len(inputs), 1))
    engine = Engine(config, Metrics())
    try:
        await engine.activate(lambda: load_serving_model(str(bundle_dir), config))
        served = await engine.explain(inputs, ExplainOptions(top_prototypes=DEFAULT_TOP_PROTOTYPES))
    finally:
        await engine.stop(drain_seconds=0)
    return served.results


def _examples(bundle: ServedBundle, config: ReportConfig) -> tuple[ExplainedExample, ...]:
    from service.preprocess import TextInput

    store = bundle.examples()
    try:
        rows = [store[int(i)] for i in sample_ids(len(store), config.examples, config.seed)]
    finally:
        store.close()
    if not rows:
        return ()
    inputs = [TextInput(row.text, row.text_pair) for row in rows]
    explanations = asyncio.run(_explain(bundle.path, inputs))
    labels = bundle.manifest.labels
    return tuple(ExplainedExample(row.text, row.text_pair, labels[row.label], e) for row, e in zip(rows, explanations))


def bundle_report(bundle_dir: str | Path, config: ReportConfig | None = None) -> ModelReport:
    config = config or ReportConfig()
    bundle = ServedBundle.load(bundle_dir)
    manifest = bundle.manifest
    labels = tuple(manifest.labels)
    notes: list[str] = []
    evaluation = Evaluation.from_dict(manifest.metrics)
    if evaluation.accuracy is None:
        notes.append("The manifest records no evaluation of this model.")
    elif evaluation.confusion is None:
        notes.append("The bundle records no confusion matrix (it was exported before bundles did): the model directory it was exported from has one (protolm report MODEL_DIR).")
    last_layer = bundle.last_layer()
    if last_layer is None:
        notes.append(f"Bundle format {manifest.format_version} has no last layer: no prototype weights and no evidence (export the model again).")
    prototypes = report_prototypes(labels, manifest.architecture.prototype_class, last_layer, bundle.exemplars)
    encodings = _map(bundle, config, notes)
    examples = _examples(bundle, config) if config.examples else ()
    architecture = manifest.architecture
    facts = [
        ("model", f"{manifest.model.name} {manifest.model.version}" + (f" (created {manifest.model.created})" if manifest.model.created else "")),
        ("encoder", manifest.encoder),
        ("similarity", architecture.similarity),
        ("prototypes", f"{architecture.num_prototypes}" + (f" ({architecture.prototypes_per_class} per class)" if architecture.prototypes_per_class else "")),
        ("max length", f"{manifest.max_length} tokens"),
        ("trained on", f"{manifest.training_data.get('name', 'unknown')} ({manifest.training_data.get('examples', '?')} examples)"),
        ("variants", ", ".join(f"{v.name}{'' if v.servable else ' (not servable)'}" for v in manifest.variants)),
        ("example index", f"{manifest.indexes.examples.kind}, {manifest.indexes.examples.count} examples"),
        ("bundle format", str(manifest.format_version)),
    ]
    return ModelReport(
        name=manifest.model.name,
        source="serving bundle",
        path=str(bundle_dir),
        labels=labels,
        facts=tuple(facts),
        prototypes=prototypes,
        evaluation=evaluation,
        encoding_map=encodings,
        examples=examples,
        examples_source=(f"{len(examples)} training examples from the bundle (a seeded sample, seed {config.seed}), explained by the bundle's "
                         "ONNX graph: a bundle holds no validation data, so the model has seen these.") if examples else "",
        notes=tuple(notes),
    )
