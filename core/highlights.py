"""Token attention aligned to the input text, as tokens or merged into whole words.

NumPy only: the trainer, the exporter and the service all build highlights from the same
three arrays a fast tokenizer gives (character offsets, word ids, sequence ids), so a word
is weighted the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Highlight:
    text: str
    start: int  # character offsets into the segment's own text
    end: int
    weight: float
    segment: int  # 0: text, 1: text_pair


def token_highlights(
    texts: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    sequence_ids: Sequence[int | None],
    weights: Sequence[float],
) -> list[Highlight]:
    """One highlight per real token; special tokens and padding (sequence id None) are skipped."""
    return [
        Highlight(texts[segment][start:end], start, end, float(weight), segment)
        for (start, end), segment, weight in zip(offsets, sequence_ids, weights)
        if segment is not None and end > start
    ]


def word_highlights(
    texts: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    sequence_ids: Sequence[int | None],
    word_ids: Sequence[int | None],
    weights: Sequence[float],
) -> list[Highlight]:
    """Sub-word tokens merged into words; a word's weight is the sum of its pieces' weights."""
    words: list[Highlight] = []
    current: tuple[int, int] | None = None
    for (start, end), segment, word, weight in zip(offsets, sequence_ids, word_ids, weights):
        if segment is None or word is None or end <= start:
            continue
        if current == (segment, word) and words:
            last = words[-1]
            words[-1] = Highlight(texts[segment][last.start : end], last.start, end, last.weight + float(weight), segment)
        else:
            words.append(Highlight(texts[segment][start:end], start, end, float(weight), segment))
            current = (segment, word)
    return words


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
