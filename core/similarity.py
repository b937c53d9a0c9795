"""Prototype similarities as metrics: how vectors are compared, indexed and measured.

One :class:`Metric` per similarity decides everything outside the torch layer: whether
vectors are normalised, which FAISS metric indexes them, and how a FAISS score becomes the
distance the layer itself uses (1 - cos for ``cosine``, the L2 distance for the others).
Projection, the export's indexes and the service's example search all go through it, and
an unknown name raises instead of falling into a default branch. A new similarity needs its
formula in ``protolm.layers.PrototypeLayer``, an entry in :data:`METRICS` and a line in the docs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError

DEFAULT_SIMILARITY = "cosine"
# After push a prototype is its exemplar's encoding up to float error: 1 - cos <= 1e-4, or an
# L2 distance <= 1e-4 of the prototype's length (fp32 graph against PyTorch measures ~1e-7).
PUSH_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Metric:
    similarity: str
    description: str
    index_metric: str  # as the manifest records it: "cosine" (inner product of unit vectors) or "l2" (squared L2)

    @property
    def normalises(self) -> bool:
        return self.index_metric == "cosine"

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """A float32, C-ordered copy of ``vectors``, unit length where the metric compares directions."""
        prepared = np.array(vectors, dtype=np.float32, order="C", copy=True)
        if self.normalises:
            norms = np.linalg.norm(prepared, axis=-1, keepdims=True)
            prepared /= np.maximum(norms, np.finfo(np.float32).tiny)
        return prepared

    def faiss_metric(self):
        import faiss

        return faiss.METRIC_INNER_PRODUCT if self.normalises else faiss.METRIC_L2

    def distances(self, scores: np.ndarray) -> np.ndarray:
        """FAISS search scores (inner products, or squared L2) as the layer's distances."""
        if self.normalises:
            return 1.0 - scores
        return np.sqrt(np.maximum(scores, 0.0))

    def row_distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The layer's distance between ``a[i]`` and ``b[i]``, row by row."""
        a, b = self.prepare(a), self.prepare(b)
        if self.normalises:
            return self.distances((a * b).sum(-1))
        return self.distances(((a - b) ** 2).sum(-1))

    def push_tolerance(self, prototypes: np.ndarray) -> np.ndarray:
        """Per prototype, the largest distance at which it still *is* its exemplar's encoding:
        :data:`PUSH_TOLERANCE`, scaled by the prototype's length where the metric has a scale."""
        if self.normalises:
            return np.full(len(prototypes), PUSH_TOLERANCE)
        return PUSH_TOLERANCE * np.maximum(np.linalg.norm(prototypes, axis=-1), 1.0)


METRICS: dict[str, Metric] = {
    metric.similarity: metric
    for metric in (
        Metric("cosine", "cosine (distance 1 - cos)", "cosine"),
        Metric("inverse", "inverse, 1/(d+eps) of the L2 distance (the paper's)", "l2"),
        Metric("log", "log((d^2+1)/(d^2+eps)) of the L2 distance (ProtoPNet's)", "l2"),
    )
}
SIMILARITIES = tuple(METRICS)


def metric_for(similarity: str) -> Metric:
    try:
        return METRICS[similarity]
    except KeyError:
        raise ConfigError(f"unknown similarity {similarity!r}; known: {', '.join(SIMILARITIES)}") from None
