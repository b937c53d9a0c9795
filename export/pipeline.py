"""``protolm export``: a trained model directory in, a verified serving bundle out.

The bundle is built in a temporary sibling directory and moved into place only once it
loads back through ``service.bundle.Bundle``, so an interrupted export leaves no half bundle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from export.bundle_writer import write_exemplars, write_index, write_manifest, write_tokenizer
from export.config import ExportConfig
from export.indexes import build_index, index_metric, recall_at_k, write_examples
from export.onnx_graph import export_graph, graph_inputs
from export.variants import OPTIONAL_VARIANTS, build_variants, length_sorted_batches
from protolm.data import TextClassificationData
from protolm.errors import ConfigError, DataError
from protolm.inference import predict
from protolm.model import WEIGHTS_FILE, ProtoLM, load_model
from protolm.pipeline import training_data_config
from protolm.projection import Exemplar, load_exemplars, project_prototypes
from protolm.training import TRAINING_FILE, load_train_validation
from service.bundle import (
    EXAMPLE_INDEX_FILE,
    FORMAT_VERSION,
    OUTPUT_NAMES,
    PROTOTYPE_INDEX_FILE,
    VARIANT_FILES,
    Bundle,
    sha256_file,
)

log = logging.getLogger(__name__)


def _requested_variants(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(OPTIONAL_VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(OPTIONAL_VARIANTS)}")
    return names


def _training_summary(model_dir: Path) -> dict:
    path = model_dir / TRAINING_FILE
    if not path.is_file():
        raise ConfigError(f"{model_dir} has no {TRAINING_FILE}; export needs the training and validation data it names")
    return json.loads(path.read_text())


def _checked_exemplars(exemplars: list[Exemplar], train: TextClassificationData) -> list[Exemplar]:
    for exemplar in exemplars:
        row = exemplar.example_index
        if row >= len(train) or train.texts[row] != exemplar.text:
            raise DataError(f"{train.name}: row {row} is not the exemplar of prototype {exemplar.prototype}; the training data changed since training")
    return exemplars


def _metrics(evaluation: dict) -> dict:
    return {
        "data": evaluation["data"],
        "examples": evaluation["examples"],
        "accuracy": evaluation["accuracy"],
        "macro_f1": evaluation["macro_f1"],
        "faithfulness": evaluation["faithfulness"],
        "prototype_purity": (evaluation["prototypes"] or {}).get("purity"),
    }


def _example_index(directory: Path, train_pooled: np.ndarray, queries: np.ndarray, metric: str, config: ExportConfig) -> dict:
    index = build_index(train_pooled, metric, config.example_index, config.ivf_nprobe, config.hnsw_m, config.hnsw_ef_search)
    write_index(index, directory / EXAMPLE_INDEX_FILE)
    recall = 1.0 if config.example_index == "flat" else recall_at_k(index, train_pooled, queries, metric)
    entry = {"file": EXAMPLE_INDEX_FILE, "kind": config.example_index, "metric": metric, "count": index.ntotal, "recall_at_10": recall}
    if config.example_index == "ivf":
        entry.update(lists=index.nlist, nprobe=index.nprobe)
    elif config.example_index == "hnsw":
        entry.update(m=config.hnsw_m, ef_search=config.hnsw_ef_search)
    return entry


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
    summary = _training_summary(model_dir)
    data_config = training_data_config(model_dir)
    if config.data_dir is not None:
        data_config = dataclasses.replace(data_config, data_dir=config.data_dir)
    model = load_model(model_dir)
    if not isinstance(model, ProtoLM):
        raise ConfigError(f"{model_dir} holds a {model.config.architecture!r} model; only proto-lm models are served")
    train, validation = load_train_validation(data_config, summary["config"]["optim"]["seed"])
    staging = _staging_directory(bundle_dir, config.overwrite)
    try:
        _write_bundle(staging, model_dir, model, summary, train, validation, variants, config)
        Bundle.load(staging)
        _move_into_place(staging, bundle_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("bundle written to %s", bundle_dir)
    return bundle_dir


def _write_bundle(directory: Path, model_dir: Path, model: ProtoLM, summary: dict, train: TextClassificationData,
                  validation: TextClassificationData, variants: list[str], config: ExportConfig) -> None:
    created = datetime.now(timezone.utc)
    tokenizer = write_tokenizer(model, directory)
    export_graph(model, directory / VARIANT_FILES["fp32"], config.opset)

    reference = predict(model, validation, config.batch_size, config.progress)
    train_pooled = predict(model, train, config.batch_size, config.progress).pooled
    exemplars = load_exemplars(model_dir) or project_prototypes(model, train, train_pooled)
    write_exemplars(directory, _checked_exemplars(exemplars, train))

    batches = length_sorted_batches(tokenizer, validation, graph_inputs(model), config.batch_size)
    variant_entries = build_variants(
        directory, variants, model, batches, validation.labels, reference.labels, config.min_agreement, config.progress
    )

    metric = index_metric(model.config.similarity)
    prototypes = model.prototypes.vectors.detach().float().cpu().numpy()
    write_index(build_index(prototypes, metric), directory / PROTOTYPE_INDEX_FILE)
    write_examples(directory, train)
    indexes = {
        "prototypes": {"file": PROTOTYPE_INDEX_FILE, "kind": "flat", "metric": metric, "count": len(prototypes), "recall_at_10": 1.0},
        "examples": _example_index(directory, train_pooled, reference.pooled, metric, config),
    }

    version = config.model_version or f"{created:%Y%m%dT%H%MZ}-{sha256_file(model_dir / WEIGHTS_FILE)[:8]}"
    write_manifest(directory, {
        "format_version": FORMAT_VERSION,
        "model": {"name": config.model_name or model_dir.resolve().name, "version": version, "created": created.isoformat(timespec="seconds")},
        "labels": list(model.config.label_names),
        "task_type": "pair" if model.config.is_pair else "single",
        "max_length": model.config.max_length,
        "encoder": model.config.encoder,
        "architecture": {
            "similarity": model.config.similarity,
            "epsilon": model.config.epsilon,
            "num_prototypes": model.config.num_prototypes,
            "prototypes_per_class": model.config.prototypes_per_class,
            "hidden_size": model.hidden_size,
            "uses_token_type_ids": model.config.uses_token_type_ids,
            "prototype_class": model.prototype_class.tolist(),
        },
        "hyperparameters": {**summary["config"]["model"], **summary["config"]["optim"], "top_k_count": summary["top_k"]},
        "training_data": summary["train"],
        "validation_data": {"name": validation.name, "examples": len(validation)},
        "metrics": _metrics(summary["evaluation"]),
        "graph": {"opset": config.opset, "inputs": list(graph_inputs(model)), "outputs": list(OUTPUT_NAMES)},
        "variants": variant_entries,
        "indexes": indexes,
    })
