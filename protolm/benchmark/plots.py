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
    drawn = [accuracy_vs_prototypes(records, directory / ACCURACY_PLOT)]
    kept = [r for r in records if r["spec"]["suite"] == "ablations" and r["status"] == OK
            and r.get("model_dir") and Path(r["model_dir"]).is_dir()]
    if not kept:
        log.warning("no kept model directory (the SST-2 ablations keep theirs); no encoding plot drawn")
    for record in kept:
        drawn.append(encodings_pca(record, directory / PCA_PLOT.format(similarity=record["settings"]["model"]["similarity"])))
    return [p for p in drawn if p is not None]
