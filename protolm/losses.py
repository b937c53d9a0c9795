"""proto-lm's training objective as pure functions of distances, labels and class identity.

loss = ce_weight * CE + cohesion_weight * cohesion + separation_weight * separation

* cohesion: mean distance from S to the K *farthest* prototypes of its own class; minimising
  it pulls S toward all of its class's prototypes, the stragglers first.
* separation: minus the mean distance from S to the K *nearest* prototypes of the other
  classes; minimising it pushes S away from the closest competitors.

The authors' code adds both terms as similarities with signs that work against this
intent; these follow the paper's text (and ProtoPNet's cluster/separation costs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class LossWeights:
    """lambda0..2; their defaults live once, in ``protolm.config.ModelOptions``."""

    ce: float
    cohesion: float
    separation: float

    @classmethod
    def from_options(cls, options) -> "LossWeights":
        return cls(options.ce_weight, options.cohesion_weight, options.separation_weight)


def top_k_count(top_k: float, per_class: int) -> int:
    """K as a count (>= 1) or as a fraction of the prototypes per class (< 1), at least 1."""
    if top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    count = round(top_k * per_class) if top_k < 1 else int(top_k)
    return max(1, min(count, per_class))


def _own_class_mask(labels: torch.Tensor, prototype_class: torch.Tensor) -> torch.Tensor:
    return labels.unsqueeze(1) == prototype_class.unsqueeze(0)


def cohesion_loss(distances: torch.Tensor, labels: torch.Tensor, prototype_class: torch.Tensor, k: int) -> torch.Tensor:
    own = _own_class_mask(labels, prototype_class)
    farthest = distances.masked_fill(~own, float("-inf")).topk(k, dim=1).values
    return farthest.mean()


def separation_loss(
    distances: torch.Tensor, labels: torch.Tensor, prototype_class: torch.Tensor, k: int
) -> torch.Tensor:
    own = _own_class_mask(labels, prototype_class)
    nearest = distances.masked_fill(own, float("inf")).topk(k, dim=1, largest=False).values
    return -nearest.mean()


def protolm_loss(
    logits: torch.Tensor,
    distances: torch.Tensor,
    labels: torch.Tensor,
    prototype_class: torch.Tensor,
    k: int,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """The weighted total and each term (terms detached, for logging)."""
    terms = {
        "ce": F.cross_entropy(logits, labels),
        "cohesion": cohesion_loss(distances, labels, prototype_class, k),
        "separation": separation_loss(distances, labels, prototype_class, k),
    }
    total = weights.ce * terms["ce"] + weights.cohesion * terms["cohesion"] + weights.separation * terms["separation"]
    return {"loss": total, **{name: value.detach() for name, value in terms.items()}}
