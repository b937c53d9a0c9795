"""The training package's acceptance run on real data with the real encoder (slow)."""

import pytest

from protolm.model import ProtoLM
from protolm.projection import load_exemplars

pytestmark = pytest.mark.slow


def test_protolm_reaches_080_on_sst2_validation(trained_sst2_model):
    _, report = trained_sst2_model
    print(report.render())
    assert report.metrics.examples == 872
    assert report.metrics.accuracy >= 0.80


def test_attention_is_more_faithful_than_random(trained_sst2_model):
    _, report = trained_sst2_model
    faithfulness = report.faithfulness
    assert faithfulness.at("comprehensiveness", "attention", 0.2) > faithfulness.at("comprehensiveness", "random", 0.2)
    assert faithfulness.at("sufficiency", "attention", 0.2) < faithfulness.at("sufficiency", "random", 0.2)


def test_every_prototype_has_a_real_exemplar(trained_sst2_model):
    directory, report = trained_sst2_model
    model = ProtoLM.from_pretrained(directory)
    exemplars = load_exemplars(directory)
    assert len(exemplars) == model.config.num_prototypes == 200
    assert report.prototypes.purity > 0.5
    assert all(e.words for e in exemplars)
