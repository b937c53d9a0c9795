"""FAISS indexes over the prototypes and the training examples, and the examples' metadata.

Ids are positions: prototype number in the prototype index, and in the example index the
example's row in the training split the model was trained on, which is also its line in
``examples.jsonl`` and its ``example_id`` in the exemplars.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from core.bundle import ExampleRow, write_examples as write_example_rows
from core.errors import ConfigError
from core.similarity import Metric
from protolm.data import TextClassificationData

INDEX_KINDS = ("flat", "ivf", "hnsw")
RECALL_K = 10


def build_index(vectors: np.ndarray, metric: Metric, kind: str = "flat", ivf_nprobe: int = 16, hnsw_m: int = 32, hnsw_ef_search: int = 128):
    """A FAISS index holding ``vectors`` with ids 0..n-1: exact (``flat``) or approximate.

    IVF uses 4 * sqrt(n) lists, capped so each list trains on at least 39 points (FAISS's
    own minimum); ``ivf_nprobe`` lists are searched per query.
    """
    import faiss

    data = metric.prepare(vectors)
    dimension = data.shape[1]
    faiss_metric = metric.faiss_metric()
    if kind == "flat":
        index = faiss.IndexFlat(dimension, faiss_metric)
    elif kind == "ivf":
        lists = max(1, min(int(4 * math.sqrt(len(data))), len(data) // 39))
        quantizer = faiss.IndexFlat(dimension, faiss_metric)
        index = faiss.IndexIVFFlat(quantizer, dimension, lists, faiss_metric)
        index.train(data)
        index.nprobe = min(ivf_nprobe, lists)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, hnsw_m, faiss_metric)
        index.hnsw.efSearch = hnsw_ef_search
    else:
        raise ConfigError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    index.add(data)
    return index


def recall_at_k(index, vectors: np.ndarray, queries: np.ndarray, metric: Metric, k: int = RECALL_K) -> float:
    """Share of the exact k nearest neighbours that ``index`` also returns in its top k."""
    k = min(k, index.ntotal)
    exact = build_index(vectors, metric, "flat")
    queries = metric.prepare(queries)
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth.tolist(), found.tolist())]))


def write_examples(directory: Path, data: TextClassificationData) -> int:
    """The training examples as the bundle's example rows, in id (row) order."""
    return write_example_rows(directory, (
        ExampleRow(
            id=row,
            text=data.texts[row],
            text_pair=data.text_pairs[row] if data.is_pair else None,
            label=int(data.labels[row]),
            split=data.name,
        )
        for row in range(len(data))
    ))
