"""``protolm report``'s two gatherers agree: a model directory read with PyTorch and the bundle
exported from it, read without torch, report the same prototypes, weights and exemplars."""

from __future__ import annotations

import numpy as np

from core.report import ReportConfig
from protolm.report import model_dir_report
from service.report import bundle_report


def test_a_model_directory_and_its_bundle_report_the_same_prototypes(tiny_model_dir, tiny_bundle):
    config = ReportConfig(examples=2, map_sample=25)
    trained, served = model_dir_report(tiny_model_dir, config), bundle_report(tiny_bundle, config)
    assert trained.labels == served.labels and len(trained.prototypes) == len(served.prototypes) == 6
    for a, b in zip(trained.prototypes, served.prototypes):
        assert (a.prototype_id, a.label_id) == (b.prototype_id, b.label_id)
        assert (a.exemplar.example_id, a.exemplar.text, a.exemplar.label) == (b.exemplar.example_id, b.exemplar.text, b.exemplar.label)
        np.testing.assert_allclose(a.weights, b.weights, atol=1e-6)
    assert (trained.purity, trained.distinct_exemplars) == (served.purity, served.distinct_exemplars)
    assert trained.evaluation.accuracy == served.evaluation.accuracy
    assert trained.evaluation.confusion is not None and served.evaluation.confusion == trained.evaluation.confusion
    assert served.notes == trained.notes == ()
    for report in (trained, served):
        assert report.encoding_map.points.shape == (25, 2) and report.encoding_map.prototypes.shape == (6, 2)
        assert report.encoding_map.total == 60 and len(report.examples) == 2
        assert all(e.explanation.evidence is not None and e.label in report.labels for e in report.examples)
    assert "validation" in trained.examples_source and "training examples" in served.examples_source
