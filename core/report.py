"""The model report: what a trained model or a serving bundle is, as one self-contained HTML page.

``protolm report PATH`` gathers a :class:`ModelReport` on the side that can read PATH (the
training side for a model directory, the serving side for a bundle) and renders it here:
accuracy and the confusion matrix, every prototype grouped by class with its exemplar, the
exemplar's highlighted words and the prototype's last-layer weights, purity and distinct
exemplars, a 2-D map (PCA) of the training encodings with the prototypes marked, the
faithfulness curves against random, and a few explained examples.

The page is one file: inline CSS, inline SVG, no script, nothing fetched (its Content Security
Policy forbids both), so it opens from disk or an attachment as it is. Every text from the
data is escaped. Standard library and numpy only.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.bundle import Exemplar
from core.errors import ConfigError
from core.explanation import Contribution, Explanation
from core.highlights import Highlight
from core.options import option

MAX_REPORT_EXAMPLES = 50
# Colours by class (cycled past ten), and the ranking lines of the faithfulness plots.
CLASS_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
RANDOM_RANKING = "random"
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class ReportConfig:
    output: str | None = option(None, "the HTML file to write; default: PATH-report.html next to PATH", env="PROTOLM_REPORT_OUTPUT")
    examples: int = option(6, f"how many examples to explain (at most {MAX_REPORT_EXAMPLES})", env="PROTOLM_REPORT_EXAMPLES")
    map_sample: int = option(2000, "most training encodings on the 2-D map (a seeded sample)")
    seed: int = option(0, "seed of the samples (map and explained examples)", env="PROTOLM_REPORT_SEED")
    data_dir: str | None = option(None, "model directory only: where its training data is, when not where training found it")

    def __post_init__(self) -> None:
        if not 0 <= self.examples <= MAX_REPORT_EXAMPLES:
            raise ConfigError(f"--examples must be between 0 and {MAX_REPORT_EXAMPLES}, got {self.examples}")
        if self.map_sample < 1:
            raise ConfigError(f"--map-sample must be at least 1, got {self.map_sample}")

    def output_path(self, path: str | Path) -> Path:
        if self.output:
            return Path(self.output)
        path = Path(path).resolve()
        return path.with_name(f"{path.name}-report.html")


@dataclass(frozen=True)
class ReportPrototype:
    prototype_id: int
    label: str  # the prototype's class
    label_id: int
    weights: tuple[float, ...]  # its last-layer weight for each class, in label order; () when unknown
    exemplar: Exemplar | None


@dataclass(frozen=True)
class FaithfulnessCurves:
    """Mean drop in the predicted class's probability when the top fraction of tokens by each
    ranking is removed (comprehensiveness: higher is better) or kept alone (sufficiency:
    lower is better)."""

    fractions: tuple[float, ...]
    comprehensiveness: dict[str, list[float]]  # ranking -> one value per fraction
    sufficiency: dict[str, list[float]]

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> FaithfulnessCurves:
        return cls(tuple(value["fractions"]), dict(value["comprehensiveness"]), dict(value["sufficiency"]))


@dataclass(frozen=True)
class EncodingMap:
    """A sample of the training encodings and every prototype, on the first two principal
    components of the sample."""

    points: np.ndarray  # [n, 2]
    point_labels: np.ndarray  # [n] class ids
    prototypes: np.ndarray  # [prototypes, 2]
    variance: tuple[float, float]  # share of the sample's variance along each axis
    total: int  # how many training encodings the sample was drawn from


@dataclass(frozen=True)
class ExplainedExample:
    text: str
    text_pair: str | None
    label: str | None  # the true label, when known
    explanation: Explanation


@dataclass(frozen=True)
class Evaluation:
    accuracy: float | None = None
    macro_f1: float | None = None
    data: str | None = None
    examples: int | None = None
    confusion: tuple[tuple[int, ...], ...] | None = None  # rows true, columns predicted
    faithfulness: FaithfulnessCurves | None = None

    @classmethod
    def from_dict(cls, value: Mapping[str, Any] | None) -> Evaluation:
        """From ``evaluation.json`` or a manifest's ``metrics`` (which has no confusion)."""
        value = value or {}
        confusion = value.get("confusion")
        faithfulness = value.get("faithfulness")
        return cls(
            accuracy=value.get("accuracy"),
            macro_f1=value.get("macro_f1"),
            data=value.get("data"),
            examples=value.get("examples"),
            confusion=tuple(tuple(int(v) for v in row) for row in confusion) if confusion else None,
            faithfulness=FaithfulnessCurves.from_dict(faithfulness) if faithfulness else None,
        )


@dataclass(frozen=True)
class ModelReport:
    name: str
    source: str  # "model directory" or "serving bundle"
    path: str
    labels: tuple[str, ...]
    facts: tuple[tuple[str, str], ...]  # (what, value) shown as given: encoder, similarity, data, ...
    prototypes: tuple[ReportPrototype, ...]
    evaluation: Evaluation = Evaluation()
    encoding_map: EncodingMap | None = None
    examples: tuple[ExplainedExample, ...] = ()
    examples_source: str = ""  # where the explained examples come from
    notes: tuple[str, ...] = ()  # what the report could not show, and why

    @property
    def purity(self) -> float | None:
        """Share of prototypes whose exemplar carries the prototype's class."""
        exemplars = [p.exemplar for p in self.prototypes if p.exemplar is not None]
        return float(np.mean([e.label == e.prototype_class for e in exemplars])) if exemplars else None

    @property
    def distinct_exemplars(self) -> int:
        return len({p.exemplar.example_id for p in self.prototypes if p.exemplar is not None})


# -- gathering helpers shared by both sides


def report_prototypes(labels: Sequence[str], prototype_class: Sequence[int], last_layer: np.ndarray | None,
                      exemplars: Sequence[Exemplar] | None) -> tuple[ReportPrototype, ...]:
    """Every prototype with its class, its column of the last layer ([classes, prototypes]) and its exemplar."""
    return tuple(
        ReportPrototype(
            prototype_id=p,
            label=labels[int(c)],
            label_id=int(c),
            weights=tuple(float(w) for w in last_layer[:, p]) if last_layer is not None else (),
            exemplar=exemplars[p] if exemplars else None,
        )
        for p, c in enumerate(prototype_class)
    )


def sample_ids(total: int, size: int, seed: int = 0) -> np.ndarray:
    """At most ``size`` of ``range(total)``, seeded, in increasing order."""
    if total <= size:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size, replace=False))


def encoding_map(encodings: np.ndarray, labels: np.ndarray, prototypes: np.ndarray, total: int) -> EncodingMap:
    """PCA of ``encodings`` (numpy SVD), the prototypes projected onto the same two components.

    Both are given in the space the model compares them in (unit length for cosine)."""
    encodings = np.asarray(encodings, dtype=np.float64)
    mean = encodings.mean(0)
    _, singular, components = np.linalg.svd(encodings - mean, full_matrices=False)
    axes = components[:2]
    if len(axes) < 2:  # a single encoding: a second, empty axis
        axes = np.vstack([axes, np.zeros((2 - len(axes), encodings.shape[1]))])
    energy = singular**2
    shares = energy[:2] / energy.sum() if energy.sum() > 0 else np.zeros(2)
    shares = np.pad(shares, (0, 2 - len(shares)))
    return EncodingMap(
        points=(encodings - mean) @ axes.T,
        point_labels=np.asarray(labels, dtype=np.int64),
        prototypes=(np.asarray(prototypes, dtype=np.float64) - mean) @ axes.T,
        variance=(float(shares[0]), float(shares[1])),
        total=int(total),
    )


# -- rendering


def _escape(value: Any) -> str:
    """HTML and XML text: markup escaped, characters XML forbids dropped."""
    return html.escape(_NOT_XML.sub("", str(value)), quote=True)


def _colour(label_id: int) -> str:
    return CLASS_COLOURS[label_id % len(CLASS_COLOURS)]


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def highlighted(text: str, words: Sequence[Highlight]) -> str:
    """``text`` as HTML with every word's background shaded by its weight (title: the weight)."""
    if not words:
        return _escape(text)
    strongest = max(w.weight for w in words) or 1.0
    pieces, cursor = [], 0
    for word in sorted(words, key=lambda w: w.start):
        if word.start < cursor:
            continue
        pieces.append(_escape(text[cursor : word.start]))
        alpha = max(0.0, min(1.0, word.weight / strongest)) * 0.8
        pieces.append(f'<mark style="background:rgba(230,85,13,{alpha:.2f})" title="{word.weight:.3f}">{_escape(text[word.start : word.end])}</mark>')
        cursor = word.end
    pieces.append(_escape(text[cursor:]))
    return "".join(pieces)


def _segment(words: Sequence[Highlight], segment: int) -> list[Highlight]:
    return [w for w in words if w.segment == segment]


def _texts(text: str, text_pair: str | None, words: Sequence[Highlight]) -> str:
    shown = highlighted(text, _segment(words, 0))
    if text_pair is not None:
        shown += f'<br><span class="pair">{highlighted(text_pair, _segment(words, 1))}</span>'
    return shown


def _exemplar_html(exemplar: Exemplar | None) -> str:
    if exemplar is None:
        return '<span class="muted">no exemplar</span>'
    return _texts(exemplar.text, exemplar.text_pair, exemplar.words)


def confusion_svg(labels: Sequence[str], confusion: Sequence[Sequence[int]]) -> str:
    """Rows true, columns predicted; each cell shaded by its share of its row."""
    n = len(labels)
    longest = max((len(name[:16]) for name in labels), default=1)
    cell, left, top = max(56, min(7 * longest + 10, 122)), 20 + 7 * longest, 42
    width, height = left + n * cell + 10, top + n * cell + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="confusion" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
             f'<text x="{left + n * cell / 2}" y="14" text-anchor="middle" class="axis">predicted</text>',
             f'<text x="12" y="{top + n * cell / 2}" text-anchor="middle" class="axis" transform="rotate(-90 12 {top + n * cell / 2})">true</text>']
    for j, name in enumerate(labels):
        x = left + j * cell + cell / 2
        parts.append(f'<text x="{x}" y="{top - 8}" text-anchor="middle">{_escape(name[:16])}</text>')
    for i, (name, row) in enumerate(zip(labels, confusion)):
        y = top + i * cell
        parts.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{_escape(name[:16])}</text>')
        total = sum(row) or 1
        for j, count in enumerate(row):
            share = count / total
            ink = "#fff" if share > 0.55 else "#222"
            parts.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" fill="rgba(31,119,180,{0.08 + 0.9 * share:.3f})" stroke="#fff">'
                         f'<title>true {_escape(name)}, predicted {_escape(labels[j])}: {count} ({share:.1%} of the row)</title></rect>')
            parts.append(f'<text x="{left + j * cell + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" fill="{ink}">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _ticks(high: float, count: int = 5) -> list[float]:
    return [high * i / count for i in range(count + 1)]


def faithfulness_svg(curves: FaithfulnessCurves, metric: str) -> str:
    """One metric's curves, one line per ranking; random is the dashed grey floor."""
    series: dict[str, list[float]] = getattr(curves, metric)
    width, height, left, right, top, bottom = 360, 250, 48, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    x_high = max(curves.fractions) or 1.0
    y_high = max([v for values in series.values() for v in values] + [0.05])
    y_high = float(np.ceil(y_high * 10) / 10)

    def x(value: float) -> float:
        return left + plot_w * value / x_high

    def y(value: float) -> float:
        return top + plot_h * (1 - value / y_high)

    better = "higher" if metric == "comprehensiveness" else "lower"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="faithfulness" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
             f'<text x="{left}" y="16" class="title">{metric} ({better} is better)</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#444"/>']
    for tick in _ticks(y_high):
        parts.append(f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + plot_w}" y2="{y(tick):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" text-anchor="end" class="tick">{tick:.2f}</text>')
    for fraction in curves.fractions:
        parts.append(f'<text x="{x(fraction):.1f}" y="{top + plot_h + 14}" text-anchor="middle" class="tick">{fraction:.0%}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" class="axis">top share of tokens by the ranking</text>')
    others = [name for name in series if name != RANDOM_RANKING]
    for rank, name in enumerate(others + [name for name in series if name == RANDOM_RANKING]):
        colour = "#888" if name == RANDOM_RANKING else CLASS_COLOURS[rank % len(CLASS_COLOURS)]
        dash = ' stroke-dasharray="5 4"' if name == RANDOM_RANKING else ""
        points = " ".join(f"{x(f):.1f},{y(v):.1f}" for f, v in zip(curves.fractions, series[name]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for f, v in zip(curves.fractions, series[name]):
            parts.append(f'<circle cx="{x(f):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>{_escape(name)} at {f:.0%}: {v:.3f}</title></circle>')
        legend_y = top + 12 + 16 * rank
        parts.append(f'<line x1="{left + plot_w - 120}" y1="{legend_y - 4}" x2="{left + plot_w - 100}" y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"{dash}/>'
                     f'<text x="{left + plot_w - 95}" y="{legend_y}" class="tick">{_escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _diamond(cx: float, cy: float, size: float) -> str:
    return f"M{cx:.1f},{cy - size:.1f} L{cx + size:.1f},{cy:.1f} L{cx:.1f},{cy + size:.1f} L{cx - size:.1f},{cy:.1f} Z"


def map_svg(encodings: EncodingMap, labels: Sequence[str], prototypes: Sequence[ReportPrototype]) -> str:
    """Training encodings as dots, prototypes as outlined diamonds, coloured by class; hovering a
    diamond shows its exemplar."""
    width, height, pad, legend = 680, 540, 16, 30
    every = np.vstack([encodings.points, encodings.prototypes]) if len(encodings.prototypes) else encodings.points
    low, high = every.min(0), every.max(0)
    span = np.maximum(high - low, 1e-9)
    scale = min((width - 2 * pad) / span[0], (height - 2 * pad - legend) / span[1])  # one scale: distances stay true
    left = (width - span[0] * scale) / 2
    bottom = height - pad - (height - 2 * pad - legend - span[1] * scale) / 2

    def place(point) -> tuple[float, float]:
        return left + (point[0] - low[0]) * scale, bottom - (point[1] - low[1]) * scale

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="map" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fcfcfc" stroke="#ddd"/>']
    for point, label in zip(encodings.points, encodings.point_labels):
        cx, cy = place(point)
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.2" fill="{_colour(int(label))}" fill-opacity="0.35"/>')
    for prototype, point in zip(prototypes, encodings.prototypes):
        cx, cy = place(point)
        shown = prototype.exemplar.text if prototype.exemplar is not None else "no exemplar"
        parts.append(f'<path d="{_diamond(cx, cy, 6)}" fill="{_colour(prototype.label_id)}" stroke="#000" stroke-width="1.2" class="prototype-marker">'
                     f'<title>prototype #{prototype.prototype_id} ({_escape(prototype.label)}): {_escape(shown)}</title></path>')
    x, y = pad, pad + 4
    for label_id, name in enumerate(labels):
        parts.append(f'<circle cx="{x + 4}" cy="{y}" r="4" fill="{_colour(label_id)}"/><text x="{x + 12}" y="{y + 4}" class="tick">{_escape(name[:20])}</text>')
        x += 24 + 7 * min(len(name), 20)
    parts.append(f'<path d="{_diamond(x + 6, y, 5)}" fill="#fff" stroke="#000"/><text x="{x + 16}" y="{y + 4}" class="tick">prototype</text>')
    parts.append("</svg>")
    return "".join(parts)


def _weights_html(prototype: ReportPrototype, labels: Sequence[str], largest: float) -> str:
    if not prototype.weights:
        return '<span class="muted">unknown</span>'
    rows = []
    for name, weight in zip(labels, prototype.weights):
        width = 60 * abs(weight) / largest if largest else 0
        kind = "pos" if weight >= 0 else "neg"
        rows.append(f'<div class="weight"><span class="wname">{_escape(name[:14])}</span><span class="bar {kind}" style="width:{width:.0f}px"></span>'
                    f'<span class="wvalue">{weight:+.3f}</span></div>')
    return "".join(rows)


def _prototypes_html(report: ModelReport) -> str:
    labels = report.labels
    largest = max((abs(w) for p in report.prototypes for w in p.weights), default=0.0)
    sharing: dict[int, list[int]] = {}
    for p in report.prototypes:
        if p.exemplar is not None:
            sharing.setdefault(p.exemplar.example_id, []).append(p.prototype_id)
    groups = []
    for label_id, name in enumerate(labels):
        members = [p for p in report.prototypes if p.label_id == label_id]
        if not members:
            continue
        pure = [p for p in members if p.exemplar is not None and p.exemplar.label == label_id]
        rows = []
        for p in members:
            exemplar = p.exemplar
            notes = []
            if exemplar is not None:
                if exemplar.label != label_id:
                    notes.append(f'<span class="impure">exemplar labelled {_escape(labels[exemplar.label] if 0 <= exemplar.label < len(labels) else exemplar.label)}</span>')
                others = [i for i in sharing[exemplar.example_id] if i != p.prototype_id]
                if others:
                    notes.append(f'<span class="shared">same exemplar as {", ".join(f"#{i}" for i in others)}</span>')
                notes.append(f'<span class="muted">training row {exemplar.example_id}, distance {max(exemplar.distance, 0.0):.4f}</span>')
            rows.append(f'<tr class="prototype" id="prototype-{p.prototype_id}"><td class="pid">#{p.prototype_id}</td>'
                        f'<td class="exemplar">{_exemplar_html(exemplar)}<div class="pnotes">{" · ".join(notes)}</div></td>'
                        f'<td class="weights">{_weights_html(p, labels, largest)}</td></tr>')
        purity = f"{len(pure)} of {len(members)} exemplars labelled {_escape(name)}"
        groups.append(f'<div class="class-group" id="class-{label_id}"><h3><span class="swatch" style="background:{_colour(label_id)}"></span>'
                      f'{_escape(name)} <span class="muted">{len(members)} prototypes; {purity}</span></h3>'
                      f'<table><thead><tr><th>prototype</th><th>exemplar (words shaded by the exemplar\'s own attention)</th>'
                      f'<th>last-layer weights</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    return "".join(groups)


def _contribution_html(contribution: Contribution) -> str:
    shown = _escape(contribution.exemplar.text.strip()) if contribution.exemplar is not None else f"prototype #{contribution.prototype_id}"
    kind = "pos" if contribution.contribution >= 0 else "neg"
    return (f'<li><span class="{kind}v">{contribution.contribution:+.2f}</span> like “{shown}” '
            f'<a href="#prototype-{contribution.prototype_id}">#{contribution.prototype_id}</a> <span class="muted">({_escape(contribution.label)}, '
            f'similarity {contribution.similarity:.3f})</span></li>')


def _example_html(example: ExplainedExample) -> str:
    explanation = example.explanation
    classification = explanation.classification
    verdict = ""
    if example.label is not None:
        right = example.label == classification.label
        verdict = f'<span class="{"right" if right else "wrong"}">{"right" if right else "wrong"}: labelled {_escape(example.label)}</span>'
    probabilities = " ".join(f'<span class="prob">{_escape(n)} {p:.3f}</span>' for n, p in classification.probabilities.items())
    top = sorted(explanation.weights, key=lambda w: -w.weight)[:5]
    truncated = ' <span class="muted">(truncated)</span>' if classification.truncated else ""
    parts = [f'<div class="example"><p class="text">{_texts(example.text, example.text_pair, explanation.weights)}</p>',
             f'<p>predicted <b>{_escape(classification.label)}</b> {verdict} {probabilities}{truncated}</p>',
             f'<p class="muted">top words: {", ".join(f"{_escape(w.text)} ({w.weight:.2f})" for w in top)}</p>']
    evidence = explanation.evidence
    if evidence is not None:
        parts.append(f'<p>evidence: {_escape(evidence.label)} over {_escape(evidence.versus)} by {evidence.margin:.2f} '
                     f'<span class="muted">(every prototype\'s part adds up to {evidence.total:.2f})</span></p>'
                     f'<ul class="evidence">{"".join(_contribution_html(c) for c in [*evidence.supporting, *evidence.opposing])}</ul>')
    else:
        matches = "".join(
            f'<li><a href="#prototype-{m.prototype_id}">#{m.prototype_id}</a> {_escape(m.label)}, similarity {m.similarity:.3f}: '
            f'{_exemplar_html(m.exemplar)}</li>' for m in explanation.prototypes
        )
        parts.append(f'<p>nearest prototypes:</p><ul class="evidence">{matches}</ul>')
    parts.append("</div>")
    return "".join(parts)


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f4f5f7}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:24px;margin:12px 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #ccc;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px}
section{background:#fff;border:1px solid #e2e4e8;border-radius:6px;padding:4px 16px 14px;margin:14px 0}
.muted{color:#777;font-weight:normal;font-size:12.5px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{background:#fff;border:1px solid #e2e4e8;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:5px 8px;border-bottom:1px solid #eee}
th{font-size:12.5px;color:#555}
td.pid{font-weight:600;white-space:nowrap}td.weights{white-space:nowrap;width:200px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:8px 0}dt{color:#666}dd{margin:0}
mark{color:inherit;border-radius:2px;padding:0 1px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px}
.weight{display:flex;align-items:center;gap:4px;font-size:12px}
.wname{width:70px;overflow:hidden;color:#555}.wvalue{font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:8px;border-radius:2px}.bar.pos{background:#2ca02c}.bar.neg{background:#d62728}
.posv{color:#2a7d2a;font-weight:600}.negv{color:#c0392b;font-weight:600}
.impure{color:#c0392b}.shared{color:#b9770e}.right{color:#2a7d2a}.wrong{color:#c0392b}
.pnotes{margin-top:2px;font-size:12px}.pair{color:#444}
.prob{background:#eef;border-radius:3px;padding:0 5px;margin-left:4px;font-size:12.5px}
.example{border-top:1px solid #eee;padding:6px 0}.example p{margin:4px 0}.example .text{font-size:15px}
ul.evidence{margin:2px 0 6px;padding-left:20px}
.plots{display:flex;flex-wrap:wrap;gap:16px}
svg text{font:11.5px system-ui,sans-serif;fill:#333}svg .title{font-weight:600;font-size:12.5px}svg .axis{fill:#555}svg .tick{font-size:11px}
.notes li{color:#8a5a00}
nav.contents{margin:6px 0 2px}nav.contents a{color:#1f5fa0}
"""


def _facts_html(report: ModelReport) -> str:
    return "<dl>" + "".join(f"<dt>{_escape(k)}</dt><dd>{_escape(v)}</dd>" for k, v in report.facts) + "</dl>"


def _cards_html(report: ModelReport) -> str:
    evaluation = report.evaluation
    purity = report.purity
    cards = [
        ("accuracy", _number(evaluation.accuracy), evaluation.data or ""),
        ("macro-F1", _number(evaluation.macro_f1), f"{evaluation.examples} examples" if evaluation.examples else ""),
        ("prototypes", str(len(report.prototypes)), f"{len(report.prototypes) // max(len(report.labels), 1)} per class"),
        ("purity", _number(purity, 3), "exemplars carrying their prototype's class"),
        ("distinct exemplars", str(report.distinct_exemplars), f"for {len(report.prototypes)} prototypes"),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card">{_escape(name)}<b>{_escape(value)}</b><span class="muted">{_escape(note)}</span></div>' for name, value, note in cards
    ) + "</div>"


def _contents_html(report: ModelReport) -> str:
    classes = " ".join(f'<a href="#class-{i}">{_escape(name)}</a>' for i, name in enumerate(report.labels)
                       if any(p.label_id == i for p in report.prototypes))
    links = [("#evaluation", "evaluation"), ("#faithfulness", "faithfulness"), ("#map", "map"), ("#prototypes", "prototypes"), ("#examples", "explained examples")]
    return ('<nav class="contents">' + " · ".join(f'<a href="{href}">{name}</a>' for href, name in links)
            + f' <span class="muted">(prototypes of {classes})</span></nav>')


def _unavailable(what: str) -> str:
    return f'<p class="muted">{_escape(what)}</p>'


def render_html(report: ModelReport) -> str:
    """The whole report as one HTML document."""
    evaluation = report.evaluation
    body = [f"<h1>{_escape(report.name)}</h1>",
            f'<p class="muted">proto-lm {_escape(report.source)} <code>{_escape(report.path)}</code> · classes: {_escape(", ".join(report.labels))}</p>',
            _cards_html(report), _contents_html(report)]
    if report.notes:
        body.append('<section id="notes"><h2>Not in this report</h2><ul class="notes">'
                    + "".join(f"<li>{_escape(n)}</li>" for n in report.notes) + "</ul></section>")
    body.append(f'<section id="model"><h2>Model</h2>{_facts_html(report)}</section>')
    confusion = (confusion_svg(report.labels, evaluation.confusion) if evaluation.confusion
                 else _unavailable("No confusion matrix was recorded for this model."))
    body.append(f'<section id="evaluation"><h2>Evaluation</h2><p>On {_escape(evaluation.data or "unknown data")}'
                f'{f" ({evaluation.examples} examples)" if evaluation.examples else ""}: accuracy {_number(evaluation.accuracy)}, '
                f'macro-F1 {_number(evaluation.macro_f1)}. Confusion matrix, rows the true label, columns the predicted one:</p>{confusion}</section>')
    if evaluation.faithfulness is not None:
        plots = "".join(faithfulness_svg(evaluation.faithfulness, metric) for metric in ("comprehensiveness", "sufficiency"))
        faithfulness = (f'<p>The drop in the predicted class\'s probability when the top share of tokens by the model\'s own explanation '
                        f'is removed (comprehensiveness) or kept alone (sufficiency), against a random ranking.</p><div class="plots">{plots}</div>')
    else:
        faithfulness = _unavailable("No faithfulness figures were recorded for this model.")
    body.append(f'<section id="faithfulness"><h2>Faithfulness</h2>{faithfulness}</section>')
    if report.encoding_map is not None:
        m = report.encoding_map
        caption = (f"{len(m.points)} of {m.total} training encodings (a seeded sample) on their first two principal components "
                   f"({m.variance[0]:.0%} and {m.variance[1]:.0%} of the sample's variance), coloured by label; "
                   f"the {len(m.prototypes)} prototypes as diamonds, coloured by class (hover for the exemplar).")
        body.append(f'<section id="map"><h2>Training encodings and prototypes</h2><p class="muted">{_escape(caption)}</p>'
                    f'{map_svg(m, report.labels, report.prototypes)}</section>')
    else:
        body.append(f'<section id="map"><h2>Training encodings and prototypes</h2>{_unavailable("The training encodings were not available.")}</section>')
    purity = report.purity
    body.append(f'<section id="prototypes"><h2>Prototypes</h2><p>{len(report.prototypes)} prototypes, each projected onto a real training '
                f'example (its exemplar). Purity {_number(purity, 3)}; {report.distinct_exemplars} distinct exemplars. '
                f'A prototype adds weight × similarity to each class\'s logit.</p>{_prototypes_html(report)}</section>')
    if report.examples:
        examples = "".join(_example_html(e) for e in report.examples)
        body.append(f'<section id="examples"><h2>Explained examples</h2><p class="muted">{_escape(report.examples_source)}</p>{examples}</section>')
    else:
        body.append(f'<section id="examples"><h2>Explained examples</h2>{_unavailable(report.examples_source or "No examples were explained.")}</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_escape(report.name)} · protolm report</title><style>{STYLE}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")
