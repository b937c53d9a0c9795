"""``protolm export``: a trained model directory in, a verified serving bundle out.

The bundle is built in a temporary sibling directory and moved into place only once it
reads back through ``core.bundle.read_manifest``, so an interrupted export leaves no half bundle.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.bundle import (
    EXAMPLE_INDEX_FILE,
    EXEMPLARS_FILE,
    FORMAT_VERSION,
    GRAPH_OUTPUTS,
    PROTOTYPE_INDEX_FILE,
    VARIANT_FILES,
    Architecture,
    Exemplar,
    GraphSpec,
    IndexInfo,
    Indexes,
    Manifest,
    ModelIdentity,
    read_manifest,
    sha256_file,
    write_exemplars,
    write_last_layer,
    write_manifest,
)
from core.errors import ConfigError, DataError
from core.similarity import Metric, metric_for
from export.bundle_writer import library_versions, write_index, write_tokenizer
from export.config import ExportConfig
from export.indexes import build_index, recall_at_k, write_examples
from export.onnx_graph import export_graph, graph_inputs
from export.variants import OPTIONAL_VARIANTS, build_variants, length_sorted_batches
from protolm.data import TextClassificationData
from protolm.inference import predict
from protolm.model import WEIGHTS_FILE, ProtoLM, load_model
from protolm.projection import load_exemplars, project_prototypes
from protolm.training import load_train_validation
from protolm.training_record import TrainingRecord

log = logging.getLogger(__name__)


def _requested_variants(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(OPTIONAL_VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(OPTIONAL_VARIANTS)}")
    return names


def _checked_exemplars(exemplars: tuple[Exemplar, ...], train: TextClassificationData) -> tuple[Exemplar, ...]:
    for exemplar in exemplars:
        row = exemplar.example_id
        if row >= len(train) or train.texts[row] != exemplar.text:
            raise DataError(f"{train.name}: row {row} is not the exemplar of prototype {exemplar.prototype}; the training data changed since training")
    return exemplars


def _measured_exemplars(exemplars: tuple[Exemplar, ...], train_pooled: np.ndarray, prototypes: np.ndarray, metric: Metric, pushed: bool) -> tuple[Exemplar, ...]:
    """The exemplars with the distance from each prototype to its exemplar's encoding as
    exported; a pushed model whose prototypes are not their exemplars is refused."""
    encodings = train_pooled[[e.example_id for e in exemplars]]
    distances = metric.row_distances(encodings, prototypes[[e.prototype for e in exemplars]])
    excess = distances - metric.push_tolerance(prototypes)
    worst = int(np.argmax(excess))
    if pushed and excess[worst] > 0:
        raise ConfigError(
            f"the model was trained with push, yet prototype {exemplars[worst].prototype} is at distance "
            f"{distances[worst]:.3g} from its exemplar's encoding; the model directory changed after training"
        )
    return tuple(dataclasses.replace(e, distance=float(d)) for e, d in zip(exemplars, distances))


def _metrics(evaluation: dict | None) -> dict:
    if evaluation is None:
        return {}
    return {
        "data": evaluation["data"],
        "examples": evaluation["examples"],
        "accuracy": evaluation["accuracy"],
        "macro_f1": evaluation["macro_f1"],
        "confusion": evaluation["confusion"],
        "faithfulness": evaluation["faithfulness"],
        "prototype_purity": (evaluation["prototypes"] or {}).get("purity"),
    }


def _example_index(directory: Path, train_pooled: np.ndarray, queries: np.ndarray, metric: Metric, config: ExportConfig) -> IndexInfo:
    kind = config.example_index
    index = build_index(train_pooled, metric, kind, config.ivf_nprobe, config.hnsw_m, config.hnsw_ef_search)
    write_index(index, directory / EXAMPLE_INDEX_FILE)
    return IndexInfo(
        file=EXAMPLE_INDEX_FILE,
        kind=kind,
        metric=metric.index_metric,
        count=index.ntotal,
        recall_at_10=1.0 if kind == "flat" else recall_at_k(index, train_pooled, queries, metric),
        lists=index.nlist if kind == "ivf" else None,
        nprobe=index.nprobe if kind == "ivf" else None,
        m=config.hnsw_m if kind == "hnsw" else None,
        ef_search=config.hnsw_ef_search if kind == "hnsw" else None,
    )


def _staging_directory(bundle_dir: Path, overwrite: bool) -> Path:
    if bundle_dir.exists() and not overwrite and (not bundle_dir.is_dir() or any(bundle_dir.iterdir())):
        raise ConfigError(f"{bundle_dir} exists and is not empty; pass --overwrite to replace it")
    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{bundle_dir.name}.", dir=bundle_dir.parent))


def _move_into_place(staging: Path, bundle_dir: Path) -> None:
    if bundle_dir.is_dir():
        shutil.rmtree(bundle_dir)
    elif bundle_dir.exists():
        bundle_dir.unlink()
    staging.chmod(0o755)
    os.replace(staging, bundle_dir)


def run_export(model_dir: str | Path, bundle_dir: str | Path, config: ExportConfig = ExportConfig()) -> Path:
    model_dir, bundle_dir = Path(model_dir), Path(bundle_dir)
    variants = _requested_variants(config.variants)
    training = TrainingRecord.read(model_dir)
    data_config = training.config.data
    if config.data_dir is not None:
        data_config = dataclasses.replace(data_config, data_dir=config.data_dir)
    model = load_model(model_dir)
    if not isinstance(model, ProtoLM):
        raise ConfigError(f"{model_dir} holds a {model.config.architecture!r} model; only proto-lm models are served")
    train, validation = load_train_validation(data_config, training.config.optim.seed)
    staging = _staging_directory(bundle_dir, config.overwrite)
    try:
        _write_bundle(staging, model_dir, model, training, train, validation, variants, config)
        read_manifest(staging)
        _move_into_place(staging, bundle_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("bundle written to %s", bundle_dir)
    return bundle_dir


def _write_bundle(directory: Path, model_dir: Path, model: ProtoLM, training: TrainingRecord, train: TextClassificationData,
                  validation: TextClassificationData, variants: list[str], config: ExportConfig) -> None:
    created = datetime.now(timezone.utc)
    tokenizer = write_tokenizer(model, directory)
    export_graph(model, directory / VARIANT_FILES["fp32"], config.opset)

    reference = predict(model, validation, config.batch_size, config.progress)
    train_pooled = predict(model, train, config.batch_size, config.progress).pooled
    metric = metric_for(model.config.similarity)
    prototypes = model.prototypes.vectors.detach().float().cpu().numpy()
    saved = load_exemplars(model_dir)
    pushed = saved is not None and training.config.optim.project and training.config.optim.push
    exemplars = _checked_exemplars(saved or project_prototypes(model, train, train_pooled), train)
    exemplars = _measured_exemplars(exemplars, train_pooled, prototypes, metric, pushed)
    write_exemplars(directory / EXEMPLARS_FILE, exemplars, source=train.name)
    write_last_layer(directory, model.classifier.weight.detach().float().cpu().numpy())

    batches = length_sorted_batches(tokenizer, validation, graph_inputs(model), config.batch_size)
    variant_entries = build_variants(
        directory, variants, model, batches, validation.labels, reference.labels, config.min_agreement, config.progress, config.max_accuracy_drop
    )

    write_index(build_index(prototypes, metric), directory / PROTOTYPE_INDEX_FILE)
    write_examples(directory, train)
    indexes = Indexes(
        prototypes=IndexInfo(file=PROTOTYPE_INDEX_FILE, kind="flat", metric=metric.index_metric, count=len(prototypes), recall_at_10=1.0),
        examples=_example_index(directory, train_pooled, reference.pooled, metric, config),
    )

    version = config.model_version or f"{created:%Y%m%dT%H%MZ}-{sha256_file(model_dir / WEIGHTS_FILE)[:8]}"
    write_manifest(directory, Manifest(
        format_version=FORMAT_VERSION,
        model=ModelIdentity(name=config.model_name or model_dir.resolve().name, version=version, created=created.isoformat(timespec="seconds")),
        labels=tuple(model.config.label_names),
        task_type="pair" if model.config.is_pair else "single",
        max_length=model.config.max_length,
        encoder=model.config.encoder,
        architecture=Architecture(
            similarity=model.config.similarity,
            epsilon=model.config.epsilon,
            num_prototypes=model.config.num_prototypes,
            prototypes_per_class=model.config.prototypes_per_class,
            hidden_size=model.hidden_size,
            uses_token_type_ids=model.config.uses_token_type_ids,
            prototype_class=tuple(model.prototype_class.tolist()),
            prototypes_pushed=pushed,
        ),
        hyperparameters={**dataclasses.asdict(training.config.model), **dataclasses.asdict(training.config.optim), "top_k_count": training.top_k},
        training_data=dataclasses.asdict(training.train),
        validation_data={"name": validation.name, "examples": len(validation)},
        metrics=_metrics(training.evaluation),
        graph=GraphSpec(opset=config.opset, inputs=tuple(graph_inputs(model)), outputs=GRAPH_OUTPUTS),
        variants=tuple(variant_entries),
        indexes=indexes,
        versions=library_versions(),
    ))
