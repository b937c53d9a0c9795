"""The two layers proto-lm adds on top of an encoder: token attention and prototypes."""

from __future__ import annotations

import torch
from torch import nn

from core.errors import ConfigError
from core.similarity import metric_for


class TokenAttention(nn.Module):
    """u_t = tanh(W h_t + b), alpha = softmax_t(u_t . w) over real tokens only.

    Padding positions get exactly zero weight: their scores are replaced by the dtype's
    minimum before the softmax, so ``exp`` underflows to 0 instead of leaking mass.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.projection = nn.Linear(hidden_size, hidden_size)
        self.context = nn.Linear(hidden_size, 1, bias=False)
        # w = 0 makes every score equal: training starts from mean pooling, the pooling
        # sentence encoders are pretrained for, and learns which tokens matter from there.
        nn.init.zeros_(self.context.weight)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.context(torch.tanh(self.projection(hidden_states))).squeeze(-1)
        scores = scores.masked_fill(attention_mask == 0, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)


def _cosine(pooled: torch.Tensor, vectors: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    cosine = nn.functional.normalize(pooled, dim=-1) @ nn.functional.normalize(vectors, dim=-1).T
    return 1.0 - cosine, cosine


def _squared_l2(pooled: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    return (pooled.pow(2).sum(-1, keepdim=True) - 2.0 * pooled @ vectors.T + vectors.pow(2).sum(-1).unsqueeze(0)).clamp_min(0.0)


def _l2(squared: torch.Tensor, epsilon: float) -> torch.Tensor:
    # sqrt has an infinite slope at 0; a floor keeps gradients finite when S sits on a prototype.
    return torch.sqrt(squared.clamp_min(epsilon**2))


def _inverse(pooled: torch.Tensor, vectors: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    distances = _l2(_squared_l2(pooled, vectors), epsilon)
    return distances, 1.0 / (distances + epsilon)


def _log(pooled: torch.Tensor, vectors: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    squared = _squared_l2(pooled, vectors)
    return _l2(squared, epsilon), torch.log((squared + 1.0) / (squared + epsilon))


# (distances, similarities) of pooled vectors against the prototypes, one formula per
# similarity of ``core.similarity.METRICS``; its metric says how the distances are indexed.
SIMILARITY_FUNCTIONS = {"cosine": _cosine, "inverse": _inverse, "log": _log}


class PrototypeLayer(nn.Module):
    """N learned prototype vectors, ``per_class`` for each class, scored against a pooled vector.

    Returns ``(distances, similarities)``. Distances are L2 for ``inverse`` (the paper's
    1 / (d + eps)) and ``log`` (ProtoPNet's log((d^2 + 1) / (d^2 + eps))), and 1 - cos for
    ``cosine``. Losses work on distances; the classifier reads similarities.
    """

    def __init__(self, num_classes: int, per_class: int, hidden_size: int, similarity: str, epsilon: float):
        super().__init__()
        metric_for(similarity)
        if similarity not in SIMILARITY_FUNCTIONS:
            raise ConfigError(f"similarity {similarity!r} has a metric but no formula in the prototype layer")
        self.similarity = similarity
        self.epsilon = epsilon
        self.vectors = nn.Parameter(torch.rand(num_classes * per_class, hidden_size))
        self.register_buffer(
            "prototype_class", torch.arange(num_classes).repeat_interleave(per_class), persistent=True
        )

    @property
    def num_prototypes(self) -> int:
        return self.vectors.shape[0]

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return SIMILARITY_FUNCTIONS[self.similarity](pooled, self.vectors, self.epsilon)
