"""Markdown tables (and the plots) built from the runner's result files, nothing else.

Accuracy differences are in points (percentage points of accuracy). A task is a *win* for
proto-lm when its mean accuracy is at least 1 point above the baseline's, a *loss* when at
least 1 point below, and a *tie* in between: the paper's claim is "no worse than plain
fine-tuning", and 1 point is the margin the project holds proto-lm to.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from protolm.benchmark.protocols import STANDARD
from protolm.benchmark.runner import OK, load_records
from protolm.benchmark.suites import ABLATIONS, ARCHITECTURES, TASK_ORDER

MARGIN_POINTS = 1.0
FAITHFULNESS_AT = 0.2
MODEL_NAMES = {"protolm": "proto-lm", "baseline": "baseline"}
RANKING_NAMES = {"attention": "attention", "gradient_x_input": "gradient×input", "random": "random"}


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "–"
    mean = scale * statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def verdict(delta_points: float) -> str:
    if delta_points >= MARGIN_POINTS:
        return "win"
    if delta_points <= -MARGIN_POINTS:
        return "loss"
    return "tie"


def _by(records: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[tuple(record["spec"][k] for k in keys)].append(record)
    return groups


def _size(part: dict) -> str:
    available = part.get("available")
    if available and part["examples"] < available:
        return f"{part['examples']:,} of {available:,}"
    return f"{part['examples']:,}"


def majority_share(confusion: list[list[int]]) -> float:
    """Accuracy of always predicting the test set's most frequent class."""
    counts = [sum(row) for row in confusion]
    return max(counts) / sum(counts)


def task_rows(records: list[dict], suite: str = "tasks") -> list[dict]:
    """One row per task of ``suite``: both models' accuracy and macro-F1 over their ok seeds."""
    tasks = [r for r in records if r["spec"]["suite"] == suite]
    ok = _by([r for r in tasks if r["status"] == OK], "task", "architecture")
    rows = []
    for task in TASK_ORDER:
        runs = {a: ok.get((task, a), []) for a in ARCHITECTURES}
        if not any(runs.values()) and not any(r["spec"]["task"] == task for r in tasks):
            continue
        row = {"task": task, "runs": runs, "failed": [r for r in tasks if r["spec"]["task"] == task and r["status"] != OK]}
        if all(runs.values()):
            accuracy = {a: [r["accuracy"] for r in runs[a]] for a in ARCHITECTURES}
            row["delta"] = 100 * (statistics.mean(accuracy["protolm"]) - statistics.mean(accuracy["baseline"]))
        rows.append(row)
    return rows


def accuracy_table(records: list[dict], suite: str = "tasks") -> str:
    lines = [
        "| task | protocol | train examples × epochs | test examples | seeds | proto-lm accuracy | baseline accuracy | Δ (points) | proto-lm macro-F1 | baseline macro-F1 | verdict | majority class | minutes per run (proto-lm / baseline) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    notes = []
    for row in task_rows(records, suite):
        runs = row["runs"]
        any_run = next((r for a in ARCHITECTURES for r in runs[a]), None)
        if any_run is None:
            state = "failed" if any(r["status"] == "failed" for r in row["failed"]) else "not finished"
            lines.append(f"| {row['task']} | | | | 0 | {state} | {state} | | | | no result | | |")
            continue
        protocol = any_run["protocol"]
        mark = "" if protocol == STANDARD else " †"
        if mark and protocol not in notes:
            notes.append(f"† {row['task']}: non-standard protocol, {protocol.removeprefix('stand-in: ')}.")
        data = any_run["data"]
        seeds = min(len(runs[a]) for a in ARCHITECTURES)
        delta = row.get("delta")
        majority = majority_share(any_run["confusion"])
        minutes = " / ".join(
            f"{statistics.mean(r['total_seconds'] for r in runs[a]) / 60:.1f}" if runs[a] else "–" for a in ARCHITECTURES
        )
        lines.append(
            f"| {row['task']}{mark} | {'standard' if not mark else 'stand-in'} "
            f"| {_size(data['train'])} × {any_run['spec']['budget']['epochs']:g} | {_size(data['test'])} ({data['test']['name']}) | {seeds} "
            f"| {_mean_std([r['accuracy'] for r in runs['protolm']])} | {_mean_std([r['accuracy'] for r in runs['baseline']])} "
            f"| {'–' if delta is None else f'{delta:+.1f}'} "
            f"| {_mean_std([r['macro_f1'] for r in runs['protolm']])} | {_mean_std([r['macro_f1'] for r in runs['baseline']])} "
            f"| {_verdict_cell(row, majority)} | {100 * majority:.1f} | {minutes} |"
        )
    return "\n".join(lines + ([""] + notes if notes else []))


CURVE_TOLERANCE_POINTS = 0.5  # proto-lm's mean may trail the baseline's by this much at a budget


def curve_rows(records: list[dict]) -> list[dict]:
    """One row per (task, training size) of the curves suite, sizes ascending (all data last)."""
    ok = _by([r for r in records if r["spec"]["suite"] == "curves" and r["status"] == OK], "task", "architecture")
    rows = []
    for task in TASK_ORDER:
        sizes: dict[int | None, dict[str, list[dict]]] = defaultdict(lambda: {a: [] for a in ARCHITECTURES})
        for architecture in ARCHITECTURES:
            for record in ok.get((task, architecture), []):
                sizes[record["spec"]["budget"]["train_samples"]][architecture].append(record)
        for size in sorted(sizes, key=lambda n: float("inf") if n is None else n):
            runs = sizes[size]
            any_run = next(r for a in ARCHITECTURES for r in runs[a])
            accuracy = {a: [r["accuracy"] for r in runs[a]] for a in ARCHITECTURES}
            row = {"task": task, "examples": any_run["data"]["train"]["examples"], "accuracy": accuracy}
            if all(accuracy.values()):
                row["delta"] = 100 * (statistics.mean(accuracy["protolm"]) - statistics.mean(accuracy["baseline"]))
            rows.append(row)
    return rows


def curve_table(records: list[dict]) -> str:
    lines = [
        "| task | training examples | seeds (proto-lm / baseline) | proto-lm accuracy | baseline accuracy | Δ (points) | "
        f"proto-lm ≥ baseline − {CURVE_TOLERANCE_POINTS:g} |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for row in curve_rows(records):
        delta = row.get("delta")
        holds = "–" if delta is None else ("yes" if delta >= -CURVE_TOLERANCE_POINTS else "**no**")
        seeds = " / ".join(str(len(row["accuracy"][a])) for a in ARCHITECTURES)
        lines.append(
            f"| {row['task']} | {row['examples']:,} | {seeds} | {_mean_std(row['accuracy']['protolm'])} "
            f"| {_mean_std(row['accuracy']['baseline'])} | {'–' if delta is None else f'{delta:+.1f}'} | {holds} |"
        )
    return "\n".join(lines)


def _verdict_cell(row: dict, majority: float) -> str:
    if "delta" not in row:
        return "–"
    means = [statistics.mean(r["accuracy"] for r in row["runs"][a]) for a in ARCHITECTURES]
    if max(means) <= majority + MARGIN_POINTS / 100:
        return "no signal: neither beats the majority class"
    return verdict(row["delta"])


def _faithfulness(runs: list[dict], metric: str, ranking: str, fraction: float | None) -> list[float]:
    values = []
    for run in runs:
        f = run.get("faithfulness")
        if not f or ranking not in f[metric]:
            continue
        series = f[metric][ranking]
        values.append(statistics.mean(series) if fraction is None else series[f["fractions"].index(fraction)])
    return values


def faithfulness_table(records: list[dict]) -> str:
    """AOPC (the mean over the 1/5/10/20/50% fractions) and the 20% figure, per ranking."""
    lines = [
        "| task | model: ranking | comprehensiveness AOPC ↑ | random | sufficiency AOPC ↓ | random | comprehensiveness @20% | random @20% | beats random |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in task_rows(records):
        for architecture in ARCHITECTURES:
            runs = row["runs"][architecture]
            rankings = {k for r in runs if r.get("faithfulness") for k in r["faithfulness"]["comprehensiveness"]} - {"random"}
            for ranking in sorted(rankings):
                cells = [_mean_std(_faithfulness(runs, metric, name, fraction), scale=1.0, digits=3)
                         for metric, fraction in (("comprehensiveness", None), ("sufficiency", None), ("comprehensiveness", FAITHFULNESS_AT))
                         for name in (ranking, "random")]
                beats = statistics.mean(_faithfulness(runs, "comprehensiveness", ranking, None)) > statistics.mean(
                    _faithfulness(runs, "comprehensiveness", "random", None))
                lines.append(f"| {row['task']} | {MODEL_NAMES[architecture]}: {RANKING_NAMES[ranking]} | "
                             + " | ".join(cells) + f" | {'yes' if beats else '**no**'} |")
    return "\n".join(lines)


def faithfulness_detail(records: list[dict]) -> str:
    lines = ["| task | model | metric | ranking | 1% | 5% | 10% | 20% | 50% |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in task_rows(records):
        for architecture in ARCHITECTURES:
            runs = [r for r in row["runs"][architecture] if r.get("faithfulness")]
            if not runs:
                continue
            fractions = runs[0]["faithfulness"]["fractions"]
            for metric in ("comprehensiveness", "sufficiency"):
                for ranking in runs[0]["faithfulness"][metric]:
                    cells = [f"{statistics.mean(_faithfulness(runs, metric, ranking, q)):.3f}" for q in fractions]
                    lines.append(f"| {row['task']} | {MODEL_NAMES[architecture]} | {metric} | {RANKING_NAMES[ranking]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_rows(records: list[dict]) -> list[dict]:
    """The ablation records in the suite's order."""
    order = {(group, label): position for position, (group, label, _) in enumerate(ABLATIONS)}
    rows = [r for r in records if r["spec"]["suite"] == "ablations"]
    return sorted(rows, key=lambda r: order.get((r["spec"]["group"], r["spec"]["label"]), len(order)))


def ablation_table(records: list[dict]) -> str:
    lines = ["| group | setting | accuracy | prototype purity | distinct exemplars / N | note |", "|---|---|---:|---:|---:|---|"]
    for record in ablation_rows(records):
        spec = record["spec"]
        if record["status"] != OK:
            lines.append(f"| {spec['group']} | {spec['label']} | {record['status']} | | | {record.get('error', 'interrupted')[:80]} |")
            continue
        prototypes = record.get("prototypes") or {}
        projection = record.get("projection") or {}
        note = ""
        if "accuracy_after_push" in projection:
            note = f"accuracy {100 * projection['accuracy_before_push']:.1f} before push"
        lines.append(
            f"| {spec['group']} | {spec['label']} | {100 * record['accuracy']:.1f} | {prototypes.get('purity', float('nan')):.2f} "
            f"| {prototypes.get('distinct_exemplars', '–')} / {prototypes.get('prototypes', '–')} | {note} |"
        )
    return "\n".join(lines)


def failures(records: list[dict]) -> str:
    bad = [r for r in records if r["status"] != OK]
    if not bad:
        return "None: every run recorded in the result files finished."
    return "\n".join(f"- `{r['spec']['run_id']}`: {r['status']}: {r.get('error', 'interrupted before it finished')}" for r in bad)


def hardware_summary(records: list[dict]) -> str:
    seen = {(str(r["hardware"].get("gpu") or r["hardware"]["cpu"]), r["hardware"]["cpu_cores"], r["hardware"]["torch"]) for r in records}
    commits = sorted({r.get("git_commit") or "?" for r in records})
    hours = sum(r.get("total_seconds", 0.0) for r in records) / 3600
    machines = "; ".join(f"{device}, {cores} cores, torch {torch}" for device, cores, torch in sorted(seen))
    return f"{len(records)} runs on {machines}; {hours:.1f} hours of compute in all; code at commit(s) {', '.join(commits)}."


def render(records: list[dict]) -> str:
    return "\n\n".join([
        "<!-- written by `protolm benchmark report` from the result files; do not edit by hand -->",
        "## Accuracy: proto-lm against the baseline head (same encoder, data, budget and seeds)",
        accuracy_table(records),
        "## Faithfulness of each model's own explanation",
        "Drop in the predicted class's probability when the top-ranked tokens are removed (comprehensiveness, higher is "
        "better) or kept alone (sufficiency, lower is better). AOPC is the mean over 1/5/10/20/50%. proto-lm is ranked by "
        "its token attention, the baseline by gradient×input; each model is measured on its own predictions.",
        faithfulness_table(records),
        "## Full data (every training example, 1 epoch, 1 seed)",
        accuracy_table(records, "full-data"),
        "## Learning curves (1 epoch; mean ± standard deviation over seeds)",
        curve_table(records),
        "## Ablations (SST-2, proto-lm)",
        ablation_table(records),
        "## Faithfulness by fraction",
        faithfulness_detail(records),
        "## Runs that did not finish",
        failures(records),
        "## Hardware",
        hardware_summary(records),
    ]) + "\n"


def write_report(results_dir: Path, output: Path, plots_dir: Path | None) -> list[Path]:
    records = load_records(results_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(records))
    written = [output]
    if plots_dir is not None:
        from protolm.benchmark.plots import draw_plots

        written += draw_plots(records, plots_dir)
    return written
