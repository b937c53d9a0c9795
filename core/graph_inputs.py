"""How texts become the graph's inputs: the bundle tokenizer's settings and right padding.

The export measures its variants and the service serves them through these two functions,
so both tokenise and pad exactly alike.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def configure_tokenizer(tokenizer, max_length: int):
    """Truncation to ``max_length`` (longest_first for pairs, as the trainer's tokeniser), no
    padding (the batch pads to its own longest input), and special-token strings typed in a
    text read as plain text (``[SEP]`` in a text is not a segment boundary), as in training."""
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    tokenizer.no_padding()
    tokenizer.encode_special_tokens = True
    return tokenizer


def pad_batch(batch) -> dict[str, np.ndarray]:
    """input_ids / attention_mask / token_type_ids padded to the batch's longest input.

    ``batch`` holds anything with ``ids`` and ``type_ids`` (a service ``EncodedInput``, or a
    ``tokenizers`` Encoding). Pad positions hold id 0: the attention mask hides them from the
    encoder and the token attention, so their id never reaches an output.
    """
    length = max(len(e.ids) for e in batch)
    input_ids = np.zeros((len(batch), length), dtype=np.int64)
    attention_mask = np.zeros((len(batch), length), dtype=np.int64)
    token_type_ids = np.zeros((len(batch), length), dtype=np.int64)
    for row, encoded in enumerate(batch):
        size = len(encoded.ids)
        input_ids[row, :size] = encoded.ids
        attention_mask[row, :size] = 1
        token_type_ids[row, :size] = encoded.type_ids
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def encode_batch(tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The graph's inputs for a batch, padded to its longest member (as the service pads)."""
    items = list(zip(texts, text_pairs)) if text_pairs is not None else list(texts)
    arrays = pad_batch(tokenizer.encode_batch(items))
    return {name: arrays[name] for name in input_names}
