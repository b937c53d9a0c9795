"""Explanations from one forward pass: label, probabilities, weighted words and the nearest
prototypes with their exemplars; and their rendering for a terminal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protolm.highlights import Highlight, word_highlights
from protolm.inference import forward_texts
from protolm.model import ProtoLM
from protolm.projection import Exemplar


@dataclass
class PrototypeMatch:
    prototype: int
    class_name: str
    similarity: float
    exemplar: Exemplar | None


@dataclass
class Explanation:
    text: str
    text_pair: str | None
    label: str
    probabilities: dict[str, float]
    words: list[Highlight]
    prototypes: list[PrototypeMatch]


def explain_texts(
    model: ProtoLM,
    texts: list[str],
    text_pairs: list[str] | None = None,
    exemplars: list[Exemplar] | None = None,
    top_prototypes: int = 3,
) -> list[Explanation]:
    encoded, output = forward_texts(model, texts, text_pairs)
    logits = output.logits.float().cpu().numpy()
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    attention = output.token_attention.float().cpu().numpy()
    similarities = output.similarities.float().cpu().numpy()
    names = model.config.label_names
    classes = model.prototype_class.cpu().numpy()
    explanations = []
    for row, text in enumerate(texts):
        pair = text_pairs[row] if text_pairs else None
        encoding = encoded.encodings[row]
        top = np.argsort(-similarities[row], kind="stable")[:top_prototypes]
        explanations.append(
            Explanation(
                text=text,
                text_pair=pair,
                label=names[int(probabilities[row].argmax())],
                probabilities={n: float(p) for n, p in zip(names, probabilities[row])},
                words=word_highlights(
                    (text, pair) if pair is not None else (text,),
                    encoding.offsets,
                    encoding.sequence_ids,
                    encoding.word_ids,
                    attention[row],
                ),
                prototypes=[
                    PrototypeMatch(
                        prototype=int(p),
                        class_name=names[int(classes[p])],
                        similarity=float(similarities[row, p]),
                        exemplar=exemplars[p] if exemplars else None,
                    )
                    for p in top
                ],
            )
        )
    return explanations


def colour_words(text: str, words: list[Highlight], colour: bool = True) -> str:
    """The text with each word's background shaded by its weight (or [bracketed] top words)."""
    if not words:
        return text
    strongest = max(w.weight for w in words) or 1.0
    pieces, cursor = [], 0
    for word in sorted(words, key=lambda w: w.start):
        pieces.append(text[cursor : word.start])
        share = word.weight / strongest
        if colour:
            shade = 255 - int(180 * share)
            pieces.append(f"\x1b[48;2;255;{shade};{shade}m\x1b[30m{word.text}\x1b[0m")
        else:
            pieces.append(f"[{word.text}]" if share >= 0.5 else word.text)
        cursor = word.end
    pieces.append(text[cursor:])
    return "".join(pieces)


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
