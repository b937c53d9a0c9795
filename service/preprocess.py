"""Request validation and tokenisation with the `tokenizers` library (no transformers).

Validation is cheap and runs on the event loop; :meth:`Preprocessor.encode` runs in a worker
thread and does bounded work: a text is cut to a prefix long enough for the ``max_length``
tokens the model reads before it is tokenised, so a 10,000-character input costs what a
few hundred characters cost, and no overflow window the model would not use is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InvalidInputError


@dataclass(frozen=True)
class TextInput:
    text: str
    text_pair: str | None = None


@dataclass(frozen=True)
class EncodedInput:
    """One tokenised input, unpadded; the batch pads to its own longest member."""

    input: TextInput
    ids: np.ndarray  # int64 [length]
    type_ids: np.ndarray  # int64 [length]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    sequence_ids: list[int | None]
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def segments(self) -> tuple[str, ...]:
        return (self.input.text,) if self.input.text_pair is None else (self.input.text, self.input.text_pair)


@dataclass(frozen=True)
class InputLimits:
    max_inputs: int
    max_text_chars: int


# The first prefix tried is this many characters per token the model reads; each retry
# takes four times more. Sub-word tokens rarely span more than a few characters.
PREFIX_CHARS_PER_TOKEN = 8


class Preprocessor:
    """Checks a request's inputs against the model and the limits, then tokenises them."""

    def __init__(self, tokenizer, is_pair: bool, limits: InputLimits):
        self.tokenizer = tokenizer
        self.is_pair = is_pair
        self.limits = limits
        self.max_length = tokenizer.truncation["max_length"]
        self._untruncated = _without_truncation(tokenizer)
        self._pair_specials = tokenizer.num_special_tokens_to_add(True)

    def validate(self, inputs: list[TextInput]) -> None:
        """What can be checked without tokenising: counts, presence and sizes."""
        if not inputs:
            raise InvalidInputError("inputs is empty: send at least one input")
        if len(inputs) > self.limits.max_inputs:
            raise InvalidInputError(f"{len(inputs)} inputs in one call; the limit is {self.limits.max_inputs}")
        for position, item in enumerate(inputs):
            where = f"inputs[{position}]"
            if self.is_pair and item.text_pair is None:
                raise InvalidInputError(f"{where}: this model classifies text pairs; set text_pair")
            if not self.is_pair and item.text_pair is not None:
                raise InvalidInputError(f"{where}: this model classifies single texts; text_pair must not be set")
            for name, value in (("text", item.text), ("text_pair", item.text_pair)):
                if value is not None and len(value) > self.limits.max_text_chars:
                    raise InvalidInputError(
                        f"{where}.{name} has {len(value)} characters; the limit is {self.limits.max_text_chars}"
                    )

    def readable_prefixes(self, texts: list[str]) -> list[str]:
        """For each text, the shortest prefix tried whose complete words hold the
        ``max_length`` tokens the model reads, or the whole text: tokenising it keeps what
        tokenising the text keeps. Batched, so the tokenizer runs without the GIL."""
        prefixes = list(texts)
        size = self.max_length * PREFIX_CHARS_PER_TOKEN
        pending = [i for i, text in enumerate(texts) if len(text) > size]
        while pending:
            encodings = self._untruncated.encode_batch([texts[i][:size] for i in pending], add_special_tokens=False)
            short = []
            for i, encoding in zip(pending, encodings):
                words = encoding.word_ids
                # tokens of the words before the last one: the last may be cut in the middle
                if words and sum(1 for w in words if w is not None and w < words[-1]) >= self.max_length:
                    prefixes[i] = texts[i][:size]
                else:
                    short.append(i)
            size *= 4
            pending = [i for i in short if len(texts[i]) > size]
        return prefixes

    def _encode_singles(self, texts: list[str]):
        cuts = self.readable_prefixes(texts)
        encodings = self.tokenizer.encode_batch(cuts)
        return [(e, e.sequence_ids, bool(e.overflowing) or cut != text) for e, cut, text in zip(encodings, cuts, texts)]

    def _encode_pairs(self, texts: list[str], pairs: list[str]):
        """Longest-first truncation, as the tokenizer (and the trainer) does it on the whole
        texts, computed from bounded encodings: a cut text's length is counted whole
        (linear work), and no overflow window is built (on a long pair those grow with the
        product of the two lengths)."""
        wholes = [t for pair in zip(texts, pairs) for t in pair]
        cuts = self.readable_prefixes(wholes)
        segments = self._untruncated.encode_batch(cuts, add_special_tokens=False)
        lengths = [len(e.ids) for e in segments]
        was_cut = [i for i, (cut, whole) in enumerate(zip(cuts, wholes)) if cut != whole]
        for i, encoding in zip(was_cut, self._untruncated.encode_batch([wholes[i] for i in was_cut], add_special_tokens=False)):
            lengths[i] = len(encoding.ids)
        results = []
        for first, second, length, pair_length in zip(segments[::2], segments[1::2], lengths[::2], lengths[1::2]):
            kept = longest_first(length, pair_length, self.max_length - self._pair_specials)
            first.truncate(kept[0])
            second.truncate(kept[1])
            encoding = self.tokenizer.post_process(first, second)
            results.append((encoding, _pair_sequence_ids(encoding.special_tokens_mask, kept[0]), kept != (length, pair_length)))
        return results

    def encode(self, inputs: list[TextInput]) -> list[EncodedInput]:
        """Tokenise validated inputs; an input with no token the model can read is refused."""
        if self.is_pair:
            tokenised = self._encode_pairs([i.text for i in inputs], [i.text_pair for i in inputs])
        else:
            tokenised = self._encode_singles([i.text for i in inputs])
        encoded = []
        for position, (item, (encoding, sequence_ids, truncated)) in enumerate(zip(inputs, tokenised)):
            present = set(sequence_ids) - {None}
            for segment, name in enumerate(("text", "text_pair")[: 2 if self.is_pair else 1]):
                if segment not in present:
                    raise InvalidInputError(f"inputs[{position}].{name} has no readable text (empty, blank or invisible characters only)")
            encoded.append(
                EncodedInput(
                    input=item,
                    ids=np.asarray(encoding.ids, dtype=np.int64),
                    type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
                    offsets=encoding.offsets,
                    word_ids=encoding.word_ids,
                    sequence_ids=sequence_ids,
                    truncated=truncated,
                )
            )
        return encoded


def _pair_sequence_ids(special_tokens_mask: list[int], first_length: int) -> list[int | None]:
    """Which text each token comes from (``post_process`` loses the first text's ids)."""
    ids: list[int | None] = []
    seen = 0
    for special in special_tokens_mask:
        ids.append(None if special else (0 if seen < first_length else 1))
        seen += not special
    return ids


def longest_first(first: int, second: int, budget: int) -> tuple[int, int]:
    """Tokens kept of each text of a pair under the tokenizers library's longest-first
    truncation (tokenizers/src/utils/truncation.rs): when both are too long, the longer
    keeps the odd token; on a tie, the second."""
    if first + second <= budget:
        return first, second
    shorter, longer = sorted((first, second))
    if shorter > budget:
        longer = shorter
    else:
        longer = max(shorter, budget - shorter)
    if shorter + longer > budget:
        shorter = budget // 2
        longer = shorter + budget % 2
    return (longer, shorter) if first > second else (shorter, longer)


def _without_truncation(tokenizer):
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = tokenizer.encode_special_tokens
    return copy
