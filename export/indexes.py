"""FAISS indexes over the prototypes and the training examples, and the examples' metadata.

Ids are positions: prototype number in the prototype index, and in the example index the
example's row in the training split the model was trained on, which is also its line in
``examples.jsonl`` and its ``example_id`` in the exemplars.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from protolm.data import TextClassificationData
from service.bundle import EXAMPLE_OFFSETS_FILE, EXAMPLES_FILE

INDEX_KINDS = ("flat", "ivf", "hnsw")
RECALL_K = 10


def index_metric(similarity: str) -> str:
    """``cosine`` for the cosine similarity (unit vectors, inner product), else ``l2``."""
    return "cosine" if similarity == "cosine" else "l2"


def _prepared(vectors: np.ndarray, metric: str) -> np.ndarray:
    import faiss

    vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        faiss.normalize_L2(vectors)
    return vectors


def build_index(vectors: np.ndarray, metric: str, kind: str = "flat", ivf_nprobe: int = 16, hnsw_m: int = 32, hnsw_ef_search: int = 128):
    """A FAISS index holding ``vectors`` with ids 0..n-1: exact (``flat``) or approximate.

    IVF uses 4 * sqrt(n) lists, capped so each list trains on at least 39 points (FAISS's
    own minimum); ``ivf_nprobe`` lists are searched per query.
    """
    import faiss

    data = _prepared(vectors, metric)
    dimension = data.shape[1]
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    if kind == "flat":
        index = faiss.IndexFlatIP(dimension) if metric == "cosine" else faiss.IndexFlatL2(dimension)
    elif kind == "ivf":
        lists = max(1, min(int(4 * math.sqrt(len(data))), len(data) // 39))
        quantizer = faiss.IndexFlatIP(dimension) if metric == "cosine" else faiss.IndexFlatL2(dimension)
        index = faiss.IndexIVFFlat(quantizer, dimension, lists, faiss_metric)
        index.train(data)
        index.nprobe = min(ivf_nprobe, lists)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, hnsw_m, faiss_metric)
        index.hnsw.efSearch = hnsw_ef_search
    else:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    index.add(data)
    return index


def recall_at_k(index, vectors: np.ndarray, queries: np.ndarray, metric: str, k: int = RECALL_K) -> float:
    """Share of the exact k nearest neighbours that ``index`` also returns in its top k."""
    k = min(k, index.ntotal)
    exact = build_index(vectors, metric, "flat")
    queries = _prepared(queries, metric)
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth.tolist(), found.tolist())]))


def write_examples(directory: Path, data: TextClassificationData) -> None:
    """``examples.jsonl`` (one object per example, in id order) and the byte offset of every line."""
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    with open(directory / EXAMPLES_FILE, "wb") as handle:
        for row in range(len(data)):
            record = {
                "id": row,
                "text": data.texts[row],
                "text_pair": data.text_pairs[row] if data.is_pair else None,
                "label": int(data.labels[row]),
                "split": data.name,
            }
            handle.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
            offsets[row + 1] = handle.tell()
    np.save(directory / EXAMPLE_OFFSETS_FILE, offsets)
