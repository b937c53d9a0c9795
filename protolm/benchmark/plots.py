"""PNG plots from the result files: accuracy against the number of prototypes, and, for each
run whose model was kept, a 2-D PCA of SST-2 training encodings with the prototypes and their
exemplars marked (one per similarity function)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from protolm.benchmark.runner import OK
from core.errors import ConfigError
from core.similarity import metric_for

log = logging.getLogger(__name__)
ACCURACY_PLOT = "accuracy_vs_prototypes.png"
PCA_PLOT = "encodings_pca_{similarity}.png"
PCA_POINTS = 2000
CURVE_PLOT = "learning_curves.png"


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError("the plots need matplotlib: pip install 'protolm[benchmark]' (or pass --plots false)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_prototypes(records: list[dict], path: Path) -> Path | None:
    points = sorted(
        (r["settings"]["model"]["num_prototypes"], r["accuracy"], (r.get("prototypes") or {}).get("purity"))
        for r in records
        if r["spec"]["suite"] == "ablations" and r["spec"]["group"] in ("default", "prototypes") and r["status"] == OK
    )
    if len(points) < 2:
        log.warning("fewer than two prototype-count ablations finished; %s not drawn", path.name)
        return None
    plt = _pyplot()
    n, accuracy, purity = zip(*points)
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(n, [100 * a for a in accuracy], "o-", label="validation accuracy")
    axis.set_xscale("log")
    axis.set_xlabel("number of prototypes N (log scale)")
    axis.set_ylabel("SST-2 validation accuracy (%)")
    purity_axis = axis.twinx()
    purity_axis.plot(n, purity, "s--", color="tab:orange", label="prototype purity")
    purity_axis.set_ylabel("prototype purity")
    purity_axis.set_ylim(0, 1.05)
    handles = axis.get_legend_handles_labels()[0] + purity_axis.get_legend_handles_labels()[0]
    axis.legend(handles, ["validation accuracy", "prototype purity"], loc="lower right")
    axis.set_title("proto-lm on SST-2: accuracy and purity against N")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def learning_curves(records: list[dict], path: Path) -> Path | None:
    """Accuracy against training size for both heads, one panel per task, mean and spread over seeds."""
    from protolm.benchmark.report import MODEL_NAMES, curve_rows

    rows = curve_rows(records)
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    if not tasks:
        log.warning("no learning-curve run finished; %s not drawn", path.name)
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for architecture, style in (("protolm", "o-"), ("baseline", "s--")):
            points = [(row["examples"], 100 * np.array(row["accuracy"][architecture])) for row in rows
                      if row["task"] == task and row["accuracy"][architecture]]
            means = [a.mean() for _, a in points]
            spread = [a.std() for _, a in points]
            axis.errorbar([n for n, _ in points], means, yerr=spread, fmt=style, capsize=3, label=MODEL_NAMES[architecture])
        axis.set_xscale("log")
        sizes = sorted({row["examples"] for row in rows if row["task"] == task})
        axis.set_xticks(sizes, [f"{n:,}" for n in sizes], fontsize=7)
        axis.minorticks_off()
        axis.set_xlabel("training examples (log scale), 1 epoch")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(task)
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def encodings_pca(record: dict, path: Path) -> Path:
    """PCA of the training encodings of a run whose model directory was kept."""
    from protolm.data import DataSource, TextClassificationData, load_split
    from protolm.inference import predict
    from protolm.model import ProtoLM
    from protolm.projection import load_exemplars

    model = ProtoLM.from_pretrained(record["model_dir"])
    task = record["spec"]["task"]
    train = load_split(DataSource(task=task, data_dir=record["settings"]["data"]["data_dir"]), "train").sample(PCA_POINTS, 0)
    exemplars = load_exemplars(record["model_dir"]) or []
    exemplar_data = TextClassificationData(
        [e.text for e in exemplars], None, np.array([e.label for e in exemplars]), train.label_names, "exemplars")
    train_pooled = predict(model, train, progress=False).pooled
    exemplar_pooled = predict(model, exemplar_data, progress=False).pooled
    prototypes = model.prototypes.vectors.detach().cpu().numpy()
    prototype_class = model.prototype_class.cpu().numpy()
    metric = metric_for(model.config.similarity)  # a metric that compares directions draws unit vectors
    train_pooled, exemplar_pooled, prototypes = metric.prepare(train_pooled), metric.prepare(exemplar_pooled), metric.prepare(prototypes)

    mean = train_pooled.mean(0)
    _, _, components = np.linalg.svd(train_pooled - mean, full_matrices=False)
    project = lambda x: (x - mean) @ components[:2].T  # noqa: E731
    train_2d, exemplar_2d, prototype_2d = project(train_pooled), project(exemplar_pooled), project(prototypes)

    plt = _pyplot()
    colours = plt.get_cmap("tab10")
    figure, axis = plt.subplots(figsize=(7, 6))
    for label, name in enumerate(train.label_names):
        chosen = train.labels == label
        axis.scatter(*train_2d[chosen].T, s=4, alpha=0.25, color=colours(label), label=f"training example: {name}")
    for (x0, y0), (x1, y1) in zip(prototype_2d, exemplar_2d):
        axis.plot([x0, x1], [y0, y1], color="grey", linewidth=0.4, alpha=0.6)
    for label, name in enumerate(train.label_names):
        chosen = prototype_class == label
        axis.scatter(*prototype_2d[chosen].T, marker="*", s=90, color=colours(label), edgecolors="black",
                     linewidths=0.5, label=f"prototype: {name}")
    axis.scatter(*exemplar_2d.T, marker="o", s=40, facecolors="none", edgecolors="black", linewidths=0.8,
                 label=f"exemplar ({len({e.example_id for e in exemplars})} distinct)")
    axis.set_xlabel("principal component 1")
    axis.set_ylabel("principal component 2")
    axis.set_title(f"{task}, {model.config.similarity} similarity (accuracy {100 * record['accuracy']:.1f}): "
                   f"pooled S of {len(train):,} training examples", fontsize=9)
    axis.legend(fontsize=7, markerscale=1.5, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def draw_plots(records: list[dict], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    drawn = [accuracy_vs_prototypes(records, directory / ACCURACY_PLOT), learning_curves(records, directory / CURVE_PLOT)]
    kept = [r for r in records if r["spec"]["suite"] == "ablations" and r["status"] == OK
            and r.get("model_dir") and Path(r["model_dir"]).is_dir()]
    if not kept:
        log.warning("no kept model directory (the SST-2 ablations keep theirs); no encoding plot drawn")
    for record in kept:
        drawn.append(encodings_pca(record, directory / PCA_PLOT.format(similarity=record["settings"]["model"]["similarity"])))
    return [p for p in drawn if p is not None]
