"""Evaluation: accuracy, macro-F1, confusion matrix, prototype purity and faithfulness."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from protolm.data import TextClassificationData
from protolm.faithfulness import Faithfulness, evaluate_faithfulness
from protolm.inference import predict
from protolm.model import EncoderClassifier
from core.bundle import Exemplar


@dataclass
class ClassificationMetrics:
    accuracy: float
    macro_f1: float
    confusion: list[list[int]]  # rows: true label, columns: predicted label
    examples: int


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> ClassificationMetrics:
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion).astype(float)
    precision = np.divide(true_positive, confusion.sum(0), out=np.zeros(num_classes), where=confusion.sum(0) > 0)
    recall = np.divide(true_positive, confusion.sum(1), out=np.zeros(num_classes), where=confusion.sum(1) > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return ClassificationMetrics(
        accuracy=float((labels == predicted).mean()) if len(labels) else 0.0,
        macro_f1=float(f1.mean()),
        confusion=confusion.tolist(),
        examples=int(len(labels)),
    )


@dataclass
class PrototypeQuality:
    purity: float  # share of prototypes whose exemplar carries the prototype's class
    distinct_exemplars: int
    prototypes: int


def prototype_quality(exemplars: list[Exemplar]) -> PrototypeQuality:
    return PrototypeQuality(
        purity=float(np.mean([e.label == e.prototype_class for e in exemplars])),
        distinct_exemplars=len({e.example_id for e in exemplars}),
        prototypes=len(exemplars),
    )


@dataclass
class EvaluationReport:
    data: str
    label_names: list[str]
    metrics: ClassificationMetrics
    faithfulness: Faithfulness | None = None
    prototypes: PrototypeQuality | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "data": self.data,
            "label_names": self.label_names,
            "accuracy": self.metrics.accuracy,
            "macro_f1": self.metrics.macro_f1,
            "confusion": self.metrics.confusion,
            "examples": self.metrics.examples,
            "faithfulness": self.faithfulness.as_dict() if self.faithfulness else None,
            "prototypes": vars(self.prototypes) if self.prototypes else None,
            **self.extra,
        }

    def render(self) -> str:
        lines = [
            f"data:      {self.data} ({self.metrics.examples} examples)",
            f"accuracy:  {self.metrics.accuracy:.4f}",
            f"macro-F1:  {self.metrics.macro_f1:.4f}",
            "confusion (rows true, columns predicted):",
        ]
        width = max(len(n) for n in self.label_names)
        lines.append("  " + " " * width + "  " + "  ".join(f"{n[:8]:>8}" for n in self.label_names))
        for name, row in zip(self.label_names, self.metrics.confusion):
            lines.append(f"  {name:>{width}}  " + "  ".join(f"{v:>8}" for v in row))
        if self.prototypes:
            lines.append(
                f"prototypes: purity {self.prototypes.purity:.3f}, "
                f"{self.prototypes.distinct_exemplars} distinct exemplars for {self.prototypes.prototypes} prototypes"
            )
        if self.faithfulness:
            f = self.faithfulness
            lines.append("faithfulness (drop in predicted-class probability; top q% of tokens by ranking):")
            lines.append("  " + f"{'q':>22}" + "".join(f"{q:>8.0%}" for q in f.fractions))
            for metric in ("comprehensiveness", "sufficiency"):
                for ranking, values in getattr(f, metric).items():
                    lines.append(f"  {metric[:13]:>13} {ranking:>8}" + "".join(f"{v:>8.3f}" for v in values))
        return "\n".join(lines)


def evaluate(
    model: EncoderClassifier,
    data: TextClassificationData,
    batch_size: int = 128,
    exemplars: list[Exemplar] | None = None,
    with_faithfulness: bool = True,
    seed: int = 0,
    progress: bool = True,
    faithfulness_samples: int | None = None,
    predicted: np.ndarray | None = None,
) -> EvaluationReport:
    """Faithfulness ranks tokens by the model's own explanation (attention for proto-lm,
    gradient x input for the baseline) against a random ranking, on ``faithfulness_samples``
    seeded examples of ``data`` (all of them when None). ``predicted``: the model's labels
    for ``data`` when the caller has them already (a pass over the data fewer)."""
    if predicted is None:
        predicted = predict(model, data, batch_size, progress).labels
    metrics = classification_metrics(data.labels, predicted, model.config.num_classes)
    faithfulness = None
    if with_faithfulness:
        faithfulness = evaluate_faithfulness(
            model, data.sample(faithfulness_samples, seed), batch_size=min(batch_size, 64), seed=seed, progress=progress
        )
    return EvaluationReport(
        data=data.name,
        label_names=list(model.config.label_names),
        metrics=metrics,
        faithfulness=faithfulness,
        prototypes=prototype_quality(exemplars) if exemplars else None,
    )
