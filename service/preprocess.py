"""Request validation and tokenisation with the `tokenizers` library (no transformers)."""

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


class Preprocessor:
    """Checks a request's inputs against the model and the limits, then tokenises them."""

    def __init__(self, tokenizer, is_pair: bool, limits: InputLimits):
        self.tokenizer = tokenizer
        self.is_pair = is_pair
        self.limits = limits

    def validate(self, inputs: list[TextInput]) -> None:
        if not inputs:
            raise InvalidInputError("inputs is empty: send at least one input")
        if len(inputs) > self.limits.max_inputs:
            raise InvalidInputError(f"{len(inputs)} inputs in one call; the limit is {self.limits.max_inputs}")
        for position, item in enumerate(inputs):
            where = f"inputs[{position}]"
            if not item.text.strip():
                raise InvalidInputError(f"{where}.text is empty")
            if self.is_pair and item.text_pair is None:
                raise InvalidInputError(f"{where}: this model classifies text pairs; set text_pair")
            if not self.is_pair and item.text_pair is not None:
                raise InvalidInputError(f"{where}: this model classifies single texts; text_pair must not be set")
            if item.text_pair is not None and not item.text_pair.strip():
                raise InvalidInputError(f"{where}.text_pair is empty")
            for name, value in (("text", item.text), ("text_pair", item.text_pair)):
                if value is not None and len(value) > self.limits.max_text_chars:
                    raise InvalidInputError(
                        f"{where}.{name} has {len(value)} characters; the limit is {self.limits.max_text_chars}"
                    )

    def encode(self, inputs: list[TextInput]) -> list[EncodedInput]:
        self.validate(inputs)
        if self.is_pair:
            encodings = self.tokenizer.encode_batch([(i.text, i.text_pair) for i in inputs])
        else:
            encodings = self.tokenizer.encode_batch([i.text for i in inputs])
        return [
            EncodedInput(
                input=item,
                ids=np.asarray(encoding.ids, dtype=np.int64),
                type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
                offsets=encoding.offsets,
                word_ids=encoding.word_ids,
                sequence_ids=encoding.sequence_ids,
                truncated=bool(encoding.overflowing),
            )
            for item, encoding in zip(inputs, encodings)
        ]

