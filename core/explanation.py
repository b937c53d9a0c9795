"""Explanations as plain data, and their rendering for a terminal.

One set of types for every path: the service's engine builds them from the ONNX graph's
outputs, the trainer's ``protolm explain MODEL_DIR`` from the PyTorch model's, and the gRPC
client from a reply, and :func:`render` prints them all the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.bundle import Exemplar
from core.highlights import Highlight, colour_words

DEFAULT_TOP_PROTOTYPES = 3


@dataclass(frozen=True)
class Classification:
    label: str
    label_id: int
    probabilities: dict[str, float]  # every class, in the model's label order
    truncated: bool = False
    num_tokens: int = 0


@dataclass(frozen=True)
class PrototypeMatch:
    prototype_id: int
    label: str  # the prototype's class
    label_id: int
    similarity: float
    exemplar: Exemplar | None


@dataclass(frozen=True)
class NearestExample:
    example_id: int
    text: str
    text_pair: str | None
    label: str
    distance: float
    split: str


@dataclass(frozen=True)
class Contribution:
    prototype_id: int
    label: str  # the prototype's class
    label_id: int
    similarity: float
    weight: float  # its last-layer weight for the predicted class minus that for the runner-up
    contribution: float  # weight x similarity: what it adds to the margin
    exemplar: Exemplar | None


@dataclass(frozen=True)
class Evidence:
    """Why the predicted class beat the runner-up, exactly.

    The last layer is linear without a bias, so each logit is the sum over prototypes of
    weight x similarity, and the margin between two classes is the sum of every prototype's
    ``contribution``: ``total`` is that sum, ``margin`` the one the model computed, equal to
    float tolerance. ``supporting`` and ``opposing`` are the largest contributions each way.
    """

    label: str
    versus: str
    margin: float
    total: float
    supporting: list[Contribution]
    opposing: list[Contribution]


@dataclass(frozen=True)
class Explanation:
    classification: Classification
    weights: list[Highlight]  # the input's words (or tokens) with their attention
    prototypes: list[PrototypeMatch]  # the most similar prototypes, of any class
    nearest_examples: list[NearestExample]
    evidence: Evidence | None = None  # None for a bundle exported before format 3


def evidence(
    last_layer: np.ndarray,
    similarities: np.ndarray,
    logits: np.ndarray,
    labels: Sequence[str],
    prototype_class: Sequence[int],
    exemplars: Sequence[Exemplar] | None,
    top: int,
) -> Evidence | None:
    """The predicted class's margin over the runner-up, prototype by prototype.

    ``last_layer`` is [classes, prototypes] (no bias), ``similarities`` [prototypes] and
    ``logits`` [classes] of one input, as the model computed them."""
    if len(labels) < 2:
        return None
    ranked = np.argsort(-logits, kind="stable")
    predicted, runner_up = int(ranked[0]), int(ranked[1])
    weights = last_layer[predicted].astype(np.float64) - last_layer[runner_up].astype(np.float64)
    contributions = weights * similarities.astype(np.float64)
    order = np.argsort(-contributions, kind="stable")

    def contribution(p: int) -> Contribution:
        return Contribution(
            prototype_id=p,
            label=labels[int(prototype_class[p])],
            label_id=int(prototype_class[p]),
            similarity=float(similarities[p]),
            weight=float(weights[p]),
            contribution=float(contributions[p]),
            exemplar=exemplars[p] if exemplars else None,
        )

    return Evidence(
        label=labels[predicted],
        versus=labels[runner_up],
        margin=float(logits[predicted]) - float(logits[runner_up]),
        total=float(contributions.sum()),
        supporting=[contribution(int(p)) for p in order[:top] if contributions[p] > 0],
        opposing=[contribution(int(p)) for p in order[::-1][:top] if contributions[p] < 0],
    )


def _segment_words(words, segment: int) -> list[Highlight]:
    return [w for w in words if w.segment == segment]


def render(text: str, text_pair: str | None, explanation: Explanation, colour: bool = True) -> str:
    classification = explanation.classification
    probabilities = "  ".join(f"{n} {p:.3f}" for n, p in classification.probabilities.items())
    lines = [
        f"prediction: {classification.label}   ({probabilities})",
        "words:      " + colour_words(text, _segment_words(explanation.weights, 0), colour),
    ]
    if text_pair is not None:
        lines.append("pair:       " + colour_words(text_pair, _segment_words(explanation.weights, 1), colour))
    top = sorted(explanation.weights, key=lambda w: -w.weight)[:5]
    lines.append("top words:  " + ", ".join(f"{w.text} ({w.weight:.2f})" for w in top))
    if explanation.evidence is not None:
        lines.extend(_render_evidence(explanation.evidence))
    lines.append("nearest prototypes:")
    for match in explanation.prototypes:
        lines.append(f"  #{match.prototype_id:<4} class {match.label:<12} similarity {match.similarity:.4f}")
        if match.exemplar is not None:
            exemplar = match.exemplar
            shown = colour_words(exemplar.text, _segment_words(exemplar.words, 0), colour)
            lines.append(f"        exemplar: {shown}")
            if exemplar.text_pair is not None:
                lines.append(f"                  {colour_words(exemplar.text_pair, _segment_words(exemplar.words, 1), colour)}")
    return "\n".join(lines)


def _render_evidence(evidence: Evidence) -> list[str]:
    lines = [f"evidence:   {evidence.label} over {evidence.versus} by {evidence.margin:.2f} (the sum of every prototype's part: {evidence.total:.2f})"]
    for contribution in [*evidence.supporting, *evidence.opposing]:
        shown = contribution.exemplar.text if contribution.exemplar is not None else f"prototype #{contribution.prototype_id}"
        lines.append(f"  {contribution.contribution:+.2f} like '{shown}'  (#{contribution.prototype_id}, {contribution.label})")
    return lines
