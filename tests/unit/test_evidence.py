"""The evidence of an explanation is an exact decomposition of the margin the model computed."""

import numpy as np
import pytest

from core.explanation import evidence


@pytest.mark.parametrize("classes", [2, 5])
def test_the_contributions_sum_to_the_margin_and_are_ranked(classes):
    rng = np.random.default_rng(classes)
    prototypes = 40
    last_layer = rng.normal(size=(classes, prototypes)).astype(np.float32)
    similarities = rng.uniform(-1, 1, size=prototypes).astype(np.float32)
    logits = last_layer @ similarities
    labels = [f"class{c}" for c in range(classes)]
    prototype_class = np.arange(prototypes) % classes
    result = evidence(last_layer, similarities, logits, labels, prototype_class, None, top=5)
    first, second = np.argsort(-logits)[:2]
    assert (result.label, result.versus) == (labels[first], labels[second])
    assert result.margin == pytest.approx(float(logits[first] - logits[second]), abs=1e-5)
    assert result.total == pytest.approx(result.margin, abs=1e-4)
    contributions = (last_layer[first] - last_layer[second]).astype(np.float64) * similarities
    assert [c.contribution for c in result.supporting] == pytest.approx(sorted(contributions[contributions > 0], reverse=True)[:5])
    assert [c.contribution for c in result.opposing] == pytest.approx(sorted(contributions[contributions < 0])[:5])
    for c in result.supporting + result.opposing:
        assert c.contribution == pytest.approx(c.weight * c.similarity) and c.label == labels[prototype_class[c.prototype_id]]


def test_a_single_class_model_has_no_runner_up():
    assert evidence(np.ones((1, 3)), np.ones(3), np.ones(1), ["only"], [0, 0, 0], None, 3) is None
