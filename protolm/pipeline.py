"""The one-command jobs behind the CLI: train (then project, push, evaluate) and evaluate."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protolm.config import DataConfig, EvalConfig, TrainConfig
from protolm.data import TextClassificationData, load_split, validation_split_name
from protolm.evaluation import EvaluationReport, classification_metrics, evaluate
from protolm.inference import predict
from protolm.model import EncoderClassifier, ProtoLM, load_model
from protolm.projection import load_exemplars, logits_from_pooled, project_prototypes, push, save_exemplars
from protolm.training import data_source, load_train_validation, train_model
from protolm.training_record import DataSummary, TrainingRecord

log = logging.getLogger(__name__)
EVALUATION_FILE = "evaluation.json"


@dataclass(frozen=True)
class Splits:
    """Data given to :func:`run_training` directly instead of through ``DataConfig``."""

    train: TextClassificationData
    validation: TextClassificationData  # per-epoch validation: picks the best checkpoint
    test: TextClassificationData | None = None  # final evaluation; the validation split when None


def _labels_from_pooled(model: ProtoLM, pooled: np.ndarray) -> np.ndarray:
    """The predicted labels of stored encodings: push changes only the layers after pooling."""
    return logits_from_pooled(model, pooled).cpu().numpy().argmax(1)


def _accuracy(model: ProtoLM, predicted: np.ndarray, data: TextClassificationData) -> float:
    return classification_metrics(data.labels, predicted, model.config.num_classes).accuracy


def _project(model: ProtoLM, train: TextClassificationData, test: TextClassificationData, config: TrainConfig,
             output_dir: Path) -> tuple[dict, np.ndarray | None]:
    """Projection (and push, when asked, with accuracy on ``test`` before and after); returns
    what it measured, and after push the model's labels for ``test``."""
    batch = config.optim.eval_batch_size
    train_pooled = predict(model, train, batch).pooled
    exemplars = project_prototypes(model, train, train_pooled)
    report: dict = {}
    test_predicted = None
    if config.optim.push:
        test_pooled = predict(model, test, batch).pooled
        report["accuracy_before_push"] = _accuracy(model, _labels_from_pooled(model, test_pooled), test)
        report["largest_push_distance"] = max(e.distance for e in exemplars)  # how far push moves a prototype
        push(model, train_pooled, train.labels, exemplars, config.optim.push_epochs, config.optim.seed,
             refit=config.optim.push_refit)
        test_predicted = _labels_from_pooled(model, test_pooled)
        report["accuracy_after_push"] = _accuracy(model, test_predicted, test)
        exemplars = project_prototypes(model, train, train_pooled)
        model.save_pretrained(output_dir)
        log.info("push: accuracy %.4f -> %.4f on %s", report["accuracy_before_push"], report["accuracy_after_push"], test.name)
    save_exemplars(output_dir, exemplars, source=train.name)
    return report, test_predicted


def run_training(
    config: TrainConfig, eval_config: EvalConfig, splits: Splits | None = None
) -> tuple[EncoderClassifier, Path, EvaluationReport]:
    """Train, project (and push), evaluate and save; the data comes from ``config.data``
    unless ``splits`` gives it. A job interrupted before the end resumes from its training
    checkpoints (see ``protolm.checkpoints``)."""
    from protolm.checkpoints import discard_checkpoints

    splits = splits or Splits(*load_train_validation(config.data, config.optim.seed))
    train, validation = splits.train, splits.validation
    test = splits.test if splits.test is not None else validation
    model, output_dir, record = train_model(config, train, validation)
    projection, test_predicted = None, None
    if isinstance(model, ProtoLM) and config.optim.project:
        projection, test_predicted = _project(model, train, test, config, output_dir)
    report = evaluate(
        model,
        test,
        batch_size=config.optim.eval_batch_size,
        exemplars=load_exemplars(output_dir),
        with_faithfulness=eval_config.faithfulness,
        seed=eval_config.seed,
        faithfulness_samples=eval_config.faithfulness_samples,
        predicted=test_predicted,
    )
    record = dataclasses.replace(record, projection=projection, test=DataSummary(test.name, len(test)), evaluation=report.as_dict())
    record.write(output_dir)
    (output_dir / EVALUATION_FILE).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    discard_checkpoints(output_dir)
    return model, output_dir, report


def training_data_config(model_dir: str | Path) -> DataConfig:
    return TrainingRecord.read(model_dir).config.data


def run_evaluation(model_dir: str | Path, data_config: DataConfig, eval_config: EvalConfig) -> EvaluationReport:
    """Evaluate a saved model; with no data options, on the data it was trained with."""
    if not (data_config.task or data_config.dataset or data_config.train_file or data_config.validation_file):
        saved = training_data_config(model_dir)
        data_config = dataclasses.replace(saved, max_eval_samples=data_config.max_eval_samples)
    model = load_model(model_dir)
    source = data_source(dataclasses.replace(data_config, train_file=data_config.train_file or data_config.validation_file))
    split = eval_config.split or validation_split_name(source)
    data = load_split(source, split, label_names=model.config.label_names)
    data = data.sample(data_config.max_eval_samples, eval_config.seed)
    return evaluate(
        model,
        data,
        batch_size=eval_config.batch_size,
        exemplars=load_exemplars(model_dir),
        with_faithfulness=eval_config.faithfulness,
        seed=eval_config.seed,
        faithfulness_samples=eval_config.faithfulness_samples,
    )
