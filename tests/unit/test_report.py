"""The model report's page (core.report): escaped, self-contained, every prototype, well-formed
SVG, missing pieces said rather than failed; and the command's one-line errors."""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest

from cli.main import main
from core.bundle import Exemplar
from core.errors import ConfigError
from core.explanation import Classification, Explanation, PrototypeMatch, evidence
from core.highlights import Highlight
from core.report import (
    EncodingMap,
    Evaluation,
    ExplainedExample,
    ModelReport,
    ReportConfig,
    encoding_map,
    render_html,
    report_prototypes,
    sample_ids,
)

LABELS = ("neg <b>", "pos & co")
HOSTILE = "<script>alert('x')</script> \x01 \"quoted\" & more"
VOID = {"meta", "br", "hr", "img", "input", "link", "wbr"}


def exemplar(prototype: int, cls: int, label: int, example_id: int, text: str = "a fine film") -> Exemplar:
    words = tuple(Highlight(w, text.index(w), text.index(w) + len(w), 0.1 * (i + 1), 0) for i, w in enumerate(text.split()[:3]))
    return Exemplar(prototype, cls, example_id, text, None, label, 0.05 * prototype, words)


def make_report(**changes) -> ModelReport:
    classes = [0, 0, 0, 1, 1, 1]
    exemplars = [exemplar(0, 0, 0, 10, HOSTILE), exemplar(1, 0, 1, 11), exemplar(2, 0, 0, 12),
                 exemplar(3, 1, 1, 13), exemplar(4, 1, 1, 13), exemplar(5, 1, 1, 15, "dull <i>plot</i>")]
    last_layer = np.array([[1.0, 1.0, 1.0, -0.5, -0.5, -0.5], [-0.5, -0.5, -0.5, 1.0, 1.0, 1.0]], dtype=np.float32)
    similarities = np.linspace(0.1, 0.6, 6).astype(np.float32)
    logits = last_layer @ similarities
    text = "a <script>bad()</script> film"
    explanation = Explanation(
        classification=Classification(LABELS[1], 1, {LABELS[0]: 0.2, LABELS[1]: 0.8}),
        weights=[Highlight("<script>bad()</script>", 2, 24, 0.7, 0), Highlight("film", 25, 29, 0.3, 0)],
        prototypes=[PrototypeMatch(5, LABELS[1], 1, 0.6, exemplars[5])],
        nearest_examples=[],
        evidence=evidence(last_layer, similarities, logits, LABELS, classes, exemplars, 3),
    )
    rng = np.random.default_rng(0)
    report = ModelReport(
        name="model <one>",
        source="model directory",
        path="/tmp/<dir>",
        labels=LABELS,
        facts=(("encoder", "tiny <bert>"),),
        prototypes=report_prototypes(LABELS, classes, last_layer, exemplars),
        evaluation=Evaluation.from_dict({
            "accuracy": 0.75, "macro_f1": 0.7, "data": "d<ata>", "examples": 8, "confusion": [[3, 1], [1, 3]],
            "faithfulness": {"fractions": [0.01, 0.05, 0.1, 0.2, 0.5],
                             "comprehensiveness": {"attention": [0.1, 0.2, 0.3, 0.4, 0.5], "random": [0.0, 0.05, 0.1, 0.15, 0.2]},
                             "sufficiency": {"attention": [0.3, 0.2, 0.1, 0.05, 0.0], "random": [0.4, 0.35, 0.3, 0.25, 0.2]}},
        }),
        encoding_map=encoding_map(rng.normal(size=(40, 8)), rng.integers(0, 2, 40), rng.normal(size=(6, 8)), 100),
        examples=(ExplainedExample(text, None, LABELS[0], explanation),),
        examples_source="one <made-up> example",
        notes=("a note with <tags>",),
    )
    return dataclasses.replace(report, **changes)


class TagBalance(HTMLParser):
    """Every non-void element closed, in order."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def parsed(page: str) -> TagBalance:
    parser = TagBalance()
    parser.feed(page)
    parser.close()
    return parser


def test_every_text_is_escaped_and_nothing_runs_or_loads():
    page = render_html(make_report())
    assert "<script" not in page.lower()
    assert "neg <b>" not in page and "neg &lt;b&gt;" in page and "<i>plot" not in page and "&lt;one&gt;" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page and "dull &lt;i&gt;plot&lt;/i&gt;" in page
    assert "\x01" not in page
    assert """content="default-src 'none'; style-src 'unsafe-inline'\"""" in page
    balance = parsed(page)
    assert not balance.errors and balance.stack == []
    for tag, attrs in balance.tags:  # nothing fetched: no sources, links only within the page
        assert "src" not in attrs and not (attrs.get("href") or "#").startswith(("http", "//")), (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)


def test_every_prototype_appears_once_under_its_class():
    report = make_report()
    page = render_html(report)
    for prototype in report.prototypes:
        assert page.count(f'id="prototype-{prototype.prototype_id}"') == 1
    groups = re.split(r'<div class="class-group" id="class-', page)[1:]
    assert [g[0] for g in groups] == ["0", "1"]
    assert [re.findall(r'id="prototype-(\d+)"', g) for g in groups] == [["0", "1", "2"], ["3", "4", "5"]]
    assert "exemplar labelled pos &amp; co" in groups[0]  # prototype 1's exemplar is of the other class
    assert "same exemplar as #4" in groups[1] and "same exemplar as #3" in groups[1]
    assert report.purity == pytest.approx(5 / 6) and report.distinct_exemplars == 5


def test_the_svgs_are_well_formed_xml():
    page = render_html(make_report())
    svgs = re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)
    assert [re.search(r'class="(\w+)"', s).group(1) for s in svgs] == ["confusion", "faithfulness", "faithfulness", "map"]
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    map_root = ET.fromstring(svgs[-1])
    markers = [e for e in map_root.iter("{http://www.w3.org/2000/svg}path") if e.get("class") == "prototype-marker"]
    assert len(markers) == 6
    assert "alert('x')" in markers[0].find("{http://www.w3.org/2000/svg}title").text


def test_missing_pieces_are_said_not_failed():
    report = make_report(evaluation=Evaluation(), encoding_map=None, examples=(), examples_source="",
                         prototypes=report_prototypes(LABELS, [0, 1], None, None), notes=())
    page = render_html(report)
    assert "No confusion matrix was recorded" in page and "No faithfulness figures" in page
    assert "training encodings were not available" in page and "No examples were explained" in page
    assert page.count("no exemplar") == 2 and 'id="notes"' not in page
    assert not parsed(page).errors


def test_evaluation_reads_a_model_directory_and_a_manifest():
    manifest_metrics = {"data": "sst2:validation", "examples": 872, "accuracy": 0.8, "macro_f1": 0.79, "faithfulness": None,
                        "prototype_purity": 1.0}
    evaluation = Evaluation.from_dict(manifest_metrics)
    assert (evaluation.accuracy, evaluation.confusion, evaluation.faithfulness) == (0.8, None, None)
    assert Evaluation.from_dict(None) == Evaluation()
    assert make_report().evaluation.confusion == ((3, 1), (1, 3))


def test_the_map_is_the_samples_first_principal_components():
    rng = np.random.default_rng(1)
    direction = np.array([3.0, 4.0, 0.0]) / 5
    encodings = rng.normal(size=(200, 1)) * 10 * direction + rng.normal(scale=0.01, size=(200, 3))
    result = encoding_map(encodings, np.zeros(200, dtype=int), encodings[:2], 1000)
    assert isinstance(result, EncodingMap) and result.points.shape == (200, 2) and result.total == 1000
    assert result.variance[0] > 0.99
    np.testing.assert_allclose(result.prototypes, result.points[:2])  # the same projection
    single = encoding_map(encodings[:1], np.zeros(1, dtype=int), encodings[:1], 1)
    assert single.points.shape == (1, 2)
    ids = sample_ids(1000, 50, seed=3)
    assert len(set(ids)) == 50 and list(ids) == sorted(ids) and np.array_equal(ids, sample_ids(1000, 50, seed=3))
    assert list(sample_ids(5, 50)) == [0, 1, 2, 3, 4]


def test_report_options(tmp_path):
    with pytest.raises(ConfigError, match="--examples"):
        ReportConfig(examples=51)
    with pytest.raises(ConfigError, match="--map-sample"):
        ReportConfig(map_sample=0)
    assert ReportConfig().output_path(tmp_path / "model") == tmp_path / "model-report.html"
    assert ReportConfig(output="r.html").output_path(tmp_path / "model").name == "r.html"


def test_report_refuses_a_path_that_is_neither_in_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path / "nosuch")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"protolm report: error: {tmp_path}: neither a model directory (no config.json and training.json) nor a serving bundle (no manifest.json)",
        f"protolm report: error: {tmp_path / 'nosuch'}: no such model directory or serving bundle",
    ]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_a_bundle_index_gives_its_vectors_back_for_the_map(kind):
    from core.similarity import metric_for
    from export.indexes import build_index
    from service.report import reconstruct

    metric = metric_for("cosine")
    vectors = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    index = build_index(vectors, metric, kind)
    ids = sample_ids(200, 30, seed=1)
    np.testing.assert_allclose(reconstruct(index, ids), metric.prepare(vectors)[ids], atol=1e-6)
    assert reconstruct(index, np.arange(0)).shape == (0, 8)
