"""FAISS indexes and the example store: exact by default, approximate with recall measured."""

import json

import numpy as np
import pytest

from core.bundle import EXAMPLES_FILE, ExampleRow, ExampleStore
from core.errors import ConfigError
from core.similarity import METRICS, metric_for
from export.indexes import build_index, recall_at_k, write_examples
from protolm.data import TextClassificationData

COSINE, L2 = metric_for("cosine"), metric_for("inverse")


def clustered(n: int, dimension: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dimension)) * 4
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, dimension))).astype(np.float32)


@pytest.mark.parametrize("metric", [L2, COSINE], ids=["l2", "cosine"])
def test_flat_index_is_exact(metric):
    vectors = clustered(300)
    index = build_index(vectors, metric)
    queries = vectors[:5]
    scores, ids = index.search(metric.prepare(queries), 3)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]
    if metric is L2:
        brute = ((vectors[:5, None] - vectors[None]) ** 2).sum(-1)
        np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, :3], rtol=1e-4, atol=1e-3)
    else:
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert recall_at_k(index, vectors, clustered(50, seed=1), metric) == 1.0


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
@pytest.mark.parametrize("metric", [L2, COSINE], ids=["l2", "cosine"])
def test_approximate_indexes_report_recall_against_exact(kind, metric):
    vectors = clustered(4000)
    index = build_index(vectors, metric, kind)
    assert index.ntotal == len(vectors)
    recall = recall_at_k(index, vectors, clustered(200, seed=1), metric)
    assert 0.8 <= recall <= 1.0


def test_ivf_with_one_probe_loses_recall():
    vectors = clustered(4000)
    assert recall_at_k(build_index(vectors, L2, "ivf", ivf_nprobe=1), vectors, clustered(200, seed=1), L2) < 1.0


@pytest.mark.parametrize("similarity", sorted(METRICS))
def test_distances_from_index_scores_are_the_layers_distances(similarity):
    metric = metric_for(similarity)
    vectors, queries = clustered(50), clustered(4, seed=2)
    scores, ids = build_index(vectors, metric).search(metric.prepare(queries), 1)
    nearest = vectors[ids[:, 0]]
    if metric.normalises:
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
        expected = 1.0 - (unit(queries) * unit(nearest)).sum(1)
    else:
        expected = np.linalg.norm(queries - nearest, axis=1)
    np.testing.assert_allclose(metric.distances(scores)[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_an_unknown_similarity_or_index_kind_is_refused():
    with pytest.raises(ConfigError, match="unknown similarity 'manhattan'"):
        metric_for("manhattan")
    with pytest.raises(ConfigError, match="index kind"):
        build_index(clustered(10), COSINE, "lsh")


def test_example_store_reads_rows_by_id(tmp_path):
    texts = ["plain", "naïve café", 'quotes " and \\ backslash', "new\nline"]
    data = TextClassificationData(texts, ["a", "b", "c", "d"], np.array([0, 1, 1, 0]), ["no", "yes"], "demo:train")
    write_examples(tmp_path, data)
    store = ExampleStore(tmp_path)
    assert len(store) == 4
    for row in (3, 0, 2, 1):
        assert store[row] == ExampleRow(id=row, text=texts[row], text_pair="abcd"[row], label=int(data.labels[row]), split="demo:train")
    lines = (tmp_path / EXAMPLES_FILE).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2, 3]
    with pytest.raises(KeyError):
        store[4]
    store.close()
