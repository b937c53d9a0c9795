"""``protolm report MODEL_DIR``: the report of a trained model, gathered with PyTorch.

The evaluation comes from ``evaluation.json`` (or ``training.json``), the prototypes from the
model and ``exemplars.json``; the 2-D map encodes a sample of the training data again and the
explained examples are drawn from the validation split, both loaded as training loaded them.
Rendering is ``core.report``'s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from core.errors import ConfigError, ProtoLMError
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
from core.similarity import metric_for
from protolm.data import TextClassificationData
from protolm.explain import explain_texts
from protolm.inference import predict
from protolm.model import ProtoLM, load_model
from protolm.pipeline import EVALUATION_FILE
from protolm.projection import load_exemplars
from protolm.training import load_train_validation
from protolm.training_record import TrainingRecord

log = logging.getLogger(__name__)


def _evaluation(model_dir: Path, record: TrainingRecord, notes: list[str]) -> Evaluation:
    path = model_dir / EVALUATION_FILE
    if path.is_file():
        try:
            return Evaluation.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: malformed ({type(exc).__name__}: {exc})") from exc
    if record.evaluation:
        return Evaluation.from_dict(record.evaluation)
    notes.append(f"{EVALUATION_FILE} is missing and training.json records no evaluation: run `protolm evaluate {model_dir}`.")
    return Evaluation()


def _map(model: ProtoLM, train: TextClassificationData, config: ReportConfig, batch_size: int) -> EncodingMap:
    metric = metric_for(model.config.similarity)
    ids = sample_ids(len(train), config.map_sample, config.seed)
    log.info("encoding %d training examples for the map", len(ids))
    pooled = predict(model, train.subset(ids), batch_size, progress=False).pooled
    prototypes = model.prototypes.vectors.detach().float().cpu().numpy()
    return encoding_map(metric.prepare(pooled), train.labels[ids], metric.prepare(prototypes), len(train))


def _examples(model: ProtoLM, validation: TextClassificationData, exemplars, config: ReportConfig) -> tuple[ExplainedExample, ...]:
    chosen = validation.sample(config.examples, config.seed)
    if not len(chosen):
        return ()
    explanations = explain_texts(model, chosen.texts, chosen.text_pairs, exemplars)
    pairs = chosen.text_pairs or [None] * len(chosen)
    names = chosen.label_names
    return tuple(
        ExplainedExample(text, pair, names[int(label)], explanation)
        for text, pair, label, explanation in zip(chosen.texts, pairs, chosen.labels, explanations)
    )


def model_dir_report(model_dir: str | Path, config: ReportConfig | None = None) -> ModelReport:
    config = config or ReportConfig()
    model_dir = Path(model_dir)
    record = TrainingRecord.read(model_dir)
    model = load_model(model_dir)
    if not isinstance(model, ProtoLM):
        raise ConfigError(f"{model_dir} holds a {model.config.architecture!r} model, which has no prototypes to report")
    notes: list[str] = []
    labels = tuple(model.config.label_names)
    exemplars = load_exemplars(model_dir)
    if exemplars is None:
        notes.append("exemplars.json is missing: the prototypes were never projected onto training examples (train with --project true).")
    last_layer = model.classifier.weight.detach().float().cpu().numpy()
    prototypes = report_prototypes(labels, model.prototype_class.cpu().tolist(), last_layer, exemplars)
    evaluation = _evaluation(model_dir, record, notes)

    data_config = record.config.data
    if config.data_dir is not None:
        data_config = dataclasses.replace(data_config, data_dir=config.data_dir)
    encodings, examples = None, ()
    examples_source = ""
    try:
        train, validation = load_train_validation(data_config, record.config.optim.seed)
    except ProtoLMError as exc:
        notes.append(f"The training data could not be loaded ({exc}), so there is no map of the encodings and no explained example; "
                     "pass --data-dir where it is.")
    else:
        encodings = _map(model, train, config, record.config.optim.eval_batch_size)
        if config.examples:
            examples = _examples(model, validation, exemplars, config)
            examples_source = f"{len(examples)} examples of {validation.name} (a seeded sample, seed {config.seed}), explained by the PyTorch model."

    facts = [
        ("encoder", model.config.encoder),
        ("similarity", model.config.similarity),
        ("prototypes", f"{len(prototypes)} ({model.config.prototypes_per_class} per class)"),
        ("max length", f"{model.config.max_length} tokens"),
        ("trained on", f"{record.train.name} ({record.train.examples} examples)"),
        ("epochs", str(record.config.optim.epochs)),
        ("training time", f"{record.training_seconds:.0f} s"),
        ("push", "yes" if record.config.optim.push else "no"),
    ]
    if record.best_validation_accuracy is not None:
        facts.append(("best validation accuracy", f"{record.best_validation_accuracy:.4f} on {record.validation.name}"))
    return ModelReport(
        name="/".join(model_dir.resolve().parts[-2:]),
        source="model directory",
        path=str(model_dir),
        labels=labels,
        facts=tuple(facts),
        prototypes=prototypes,
        evaluation=evaluation,
        encoding_map=encodings,
        examples=examples,
        examples_source=examples_source,
        notes=tuple(notes),
    )
