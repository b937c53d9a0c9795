"""Explanations as plain data, and their rendering for a terminal.

Torch-free: the trainer's ``protolm explain MODEL_DIR`` and the gRPC client's
``protolm explain HOST:PORT`` print explanations the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protolm.highlights import Highlight, colour_words


@dataclass
class PrototypeMatch:
    prototype: int
    class_name: str
    similarity: float
    exemplar: Any  # anything with text, text_pair and words (a projection Exemplar, a gRPC Exemplar)


@dataclass
class Explanation:
    text: str
    text_pair: str | None
    label: str
    probabilities: dict[str, float]
    words: list[Highlight]
    prototypes: list[PrototypeMatch]


def _segment_words(words: list[Highlight], segment: int) -> list[Highlight]:
    return [w for w in words if w.segment == segment]


def render(explanation: Explanation, colour: bool = True) -> str:
    probabilities = "  ".join(f"{n} {p:.3f}" for n, p in explanation.probabilities.items())
    lines = [
        f"prediction: {explanation.label}   ({probabilities})",
        "words:      " + colour_words(explanation.text, _segment_words(explanation.words, 0), colour),
    ]
    if explanation.text_pair is not None:
        lines.append("pair:       " + colour_words(explanation.text_pair, _segment_words(explanation.words, 1), colour))
    top = sorted(explanation.words, key=lambda w: -w.weight)[:5]
    lines.append("top words:  " + ", ".join(f"{w.text} ({w.weight:.2f})" for w in top))
    lines.append("nearest prototypes:")
    for match in explanation.prototypes:
        lines.append(f"  #{match.prototype:<4} class {match.class_name:<12} similarity {match.similarity:.4f}")
        if match.exemplar is not None:
            exemplar = match.exemplar
            shown = colour_words(exemplar.text, _segment_words(exemplar.words, 0), colour)
            lines.append(f"        exemplar: {shown}")
            if exemplar.text_pair is not None:
                lines.append(f"                  {colour_words(exemplar.text_pair, _segment_words(exemplar.words, 1), colour)}")
    return "\n".join(lines)
