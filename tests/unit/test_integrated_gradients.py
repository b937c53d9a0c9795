"""The Integrated Gradients ranking of protolm.faithfulness, on the tiny random encoder."""

from functools import partial

import numpy as np
import pytest
import torch

from protolm.data import TextClassificationData
from protolm.faithfulness import (
    default_rankings,
    evaluate_faithfulness,
    integrated_gradients_baseline,
    integrated_gradients_scores,
)

pytest.importorskip("captum", reason="Integrated Gradients needs the benchmark extra (captum)")

TEXTS = ["a very good and lovely film", "bad"]
PAIRS = ["it was fine", "a zyxwvq thing"]


def _batch(model, is_pair):
    return dict(model.tokenize(TEXTS, PAIRS if is_pair else None))


def _special(model, input_ids):
    tokenizer = model.tokenizer
    return torch.isin(input_ids, torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]))


@pytest.mark.parametrize("is_pair", [False, True])
def test_one_finite_score_per_token_and_zero_on_special_tokens(make_model, is_pair):
    model = make_model(is_pair=is_pair)
    batch = _batch(model, is_pair)
    for norm in (False, True):
        scores = integrated_gradients_scores(model, batch, steps=8, norm=norm)
        assert scores.shape == tuple(batch["input_ids"].shape)
        assert np.isfinite(scores).all()
        special = _special(model, batch["input_ids"]).numpy()
        assert special.sum() >= (6 if is_pair else 4)  # [CLS], the [SEP]s and the padding
        assert (scores[special] == 0).all()
        assert (scores[~special] != 0).all()  # every real token gets a score


def test_the_baseline_replaces_words_and_unk_but_keeps_special_tokens(make_model):
    model = make_model(is_pair=True)
    tokenizer = model.tokenizer
    cls, sep, pad, unk = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id
    input_ids = torch.tensor([[cls, 2204, unk, sep, 2919, sep, pad]])
    assert integrated_gradients_baseline(model, input_ids).tolist() == [[cls, pad, pad, sep, pad, sep, pad]]


@pytest.mark.parametrize("is_pair", [False, True])
def test_signed_scores_add_up_to_the_log_probability_difference(make_model, is_pair):
    """Completeness: sum over tokens of IG = log p(x) - log p(baseline), for the predicted class."""
    model = make_model(is_pair=is_pair)
    with torch.no_grad():  # a sharper head, so that the difference is far from 0
        model.classifier.weight.mul_(10.0)
    batch = _batch(model, is_pair)
    with torch.no_grad():
        log_p = torch.log_softmax(model(**batch).logits, dim=-1)
        predicted = log_p.argmax(-1, keepdim=True)
        baseline = dict(batch, input_ids=integrated_gradients_baseline(model, batch["input_ids"]))
        log_p_baseline = torch.log_softmax(model(**baseline).logits, dim=-1)
    difference = (log_p.gather(1, predicted) - log_p_baseline.gather(1, predicted)).squeeze(1).numpy()
    assert np.abs(difference).min() > 0.01  # not a vacuous check (random encoders differ little)
    totals = integrated_gradients_scores(model, batch, steps=50).sum(axis=1)
    np.testing.assert_allclose(totals, difference, rtol=0.01, atol=1e-4)
    # the L2 norm has no such property: it cannot be negative
    assert (integrated_gradients_scores(model, batch, steps=8, norm=True) >= 0).all()


@pytest.mark.parametrize("is_pair", [False, True])
def test_faithfulness_with_the_ig_ranking_never_ranks_special_tokens(make_model, is_pair):
    """Special tokens scored highest or lowest give the same figures: they are never ranked."""
    model = make_model(is_pair=is_pair)
    data = TextClassificationData(TEXTS, PAIRS if is_pair else None, np.array([1, 0]), ["negative", "positive"], "tiny")

    def specials_at(value, model, batch, output):
        scores = integrated_gradients_scores(model, batch, output, steps=4)
        scores[_special(model, batch["input_ids"].cpu()).numpy()] = value
        return scores

    result = evaluate_faithfulness(
        model, data, fractions=(0.2, 0.5), progress=False,
        rankings=("integrated_gradients", "first", "last", "random"),
        rankers={"integrated_gradients": partial(integrated_gradients_scores, steps=4),
                 "first": partial(specials_at, 1e9), "last": partial(specials_at, -1e9)},
    )
    for metric in ("comprehensiveness", "sufficiency"):
        values = getattr(result, metric)
        assert values["first"] == values["last"] == values["integrated_gradients"]
        assert all(np.isfinite(values["integrated_gradients"]))


def test_ig_is_never_a_default_ranking(make_model):
    assert default_rankings(make_model()) == ("attention", "random")
    assert default_rankings(make_model(architecture="baseline")) == ("gradient_x_input", "random")
