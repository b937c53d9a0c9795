"""Explanations as plain data, and their rendering for a terminal.

One set of types for every path: the service's engine builds them from the ONNX graph's
outputs, the trainer's ``protolm explain MODEL_DIR`` from the PyTorch model's, and the gRPC
client from a reply, and :func:`render` prints them all the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

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
class Explanation:
    classification: Classification
    weights: list[Highlight]  # the input's words (or tokens) with their attention
    prototypes: list[PrototypeMatch]
    nearest_examples: list[NearestExample]


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
