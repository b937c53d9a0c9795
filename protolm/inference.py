"""Batched PyTorch inference over a whole dataset (evaluation, projection, faithfulness).

Examples are sorted by length before batching so each batch pads little, and results are
put back in the original order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from protolm.data import TextClassificationData
from protolm.model import ClassifierOutput, EncoderClassifier


@dataclass
class Predictions:
    logits: np.ndarray  # [n, classes]
    pooled: np.ndarray  # [n, hidden]
    similarities: np.ndarray | None  # [n, prototypes]; proto-lm only

    @property
    def probabilities(self) -> np.ndarray:
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    @property
    def labels(self) -> np.ndarray:
        return self.logits.argmax(axis=1)


def _length_order(data: TextClassificationData) -> np.ndarray:
    lengths = [len(t) + (len(p) if data.is_pair else 0) for t, p in zip(data.texts, data.text_pairs or data.texts)]
    return np.argsort(lengths, kind="stable")


def iterate_batches(model: EncoderClassifier, data: TextClassificationData, batch_size: int, progress: bool, description: str):
    """Yields (original indices, model output) for length-sorted batches, without gradients."""
    order = _length_order(data)
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=description, disable=not progress, unit="batch"):
            indices = order[start : start + batch_size]
            texts = [data.texts[i] for i in indices]
            pairs = [data.text_pairs[i] for i in indices] if data.is_pair else None
            encoded = {k: v.to(device) for k, v in model.tokenize(texts, pairs).items()}
            yield indices, model(**encoded)


def predict(model: EncoderClassifier, data: TextClassificationData, batch_size: int = 128, progress: bool = True) -> Predictions:
    logits = np.zeros((len(data), model.config.num_classes), dtype=np.float32)
    pooled = np.zeros((len(data), model.hidden_size), dtype=np.float32)
    similarities = None
    for indices, output in iterate_batches(model, data, batch_size, progress, "predict"):
        logits[indices] = output.logits.float().cpu().numpy()
        pooled[indices] = output.pooled.float().cpu().numpy()
        if output.similarities is not None:
            if similarities is None:
                similarities = np.zeros((len(data), output.similarities.shape[1]), dtype=np.float32)
            similarities[indices] = output.similarities.float().cpu().numpy()
    return Predictions(logits, pooled, similarities)


def forward_texts(model: EncoderClassifier, texts: list[str], text_pairs: list[str] | None = None) -> tuple[dict, ClassifierOutput]:
    """One forward pass over a few texts; returns the encoding too (for token-level views)."""
    encoded = model.tokenize(texts, text_pairs)
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        output = model(**{k: v.to(device) for k, v in encoded.items()})
    return encoded, output
