"""Training batches: tokenised once, padded per batch, grouped by length in random order."""

import numpy as np
import pytest
import torch

from protolm.data import TextClassificationData
from protolm.training import LengthBucketSampler, PaddingCollator, TokenizedDataset


def _padding_share(order: list[int], lengths: list[int], batch_size: int) -> float:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


def test_bucket_sampler_is_a_permutation_with_little_padding_and_no_drift():
    generator = np.random.default_rng(0)
    lengths = generator.integers(1, 60, size=2000).tolist()
    order = list(LengthBucketSampler(lengths, batch_size=16, seed=0))
    assert sorted(order) == list(range(2000))
    assert _padding_share(order, lengths, 16) < 0.15 < _padding_share(generator.permutation(2000).tolist(), lengths, 16)
    batch_lengths = [np.mean([lengths[i] for i in order[s : s + 16]]) for s in range(0, 2000, 16)]
    drift = np.corrcoef(np.arange(len(batch_lengths)), batch_lengths)[0, 1]
    assert abs(drift) < 0.3  # the batches' lengths do not fall (or rise) along the epoch


def test_bucket_sampler_order_depends_on_seed_and_epoch_only():
    lengths = list(range(1, 201))
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=3)
    first = list(sampler)
    torch.manual_seed(123)  # the global generator plays no part: a resumed run redraws the same epoch
    assert list(sampler) == first == list(LengthBucketSampler(lengths, batch_size=8, seed=3))
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == sorted(first) and second != first
    assert list(LengthBucketSampler(lengths, batch_size=8, seed=4)) != first


@pytest.mark.parametrize("is_pair", [False, True])
def test_tokenised_once_batches_equal_tokenising_each_batch(make_model, is_pair):
    model = make_model(is_pair=is_pair)
    texts = ["a fine film", "dull, dull and long; i left early", "ok", "[SEP] typed in a text stays text"]
    pairs = ["yes", "a much longer second text of the pair", "no", "maybe"] if is_pair else None
    data = TextClassificationData(texts, pairs, np.array([1, 0, 1, 0]), ["negative", "positive"], "tiny")
    batch = PaddingCollator(model)([TokenizedDataset(model, data)[i] for i in range(4)])
    expected = model.tokenize(texts, pairs)
    assert batch.keys() == {*expected.keys(), "labels"}
    for name, tensor in expected.items():
        assert torch.equal(batch[name], tensor), name
    assert batch["labels"].tolist() == [1, 0, 1, 0]
