"""proto-lm's token attention against post-hoc attributions on the same model, in one run.

For each trained proto-lm (a directory holding ``model/`` and its serving ``bundle/``):

1. faithfulness (ERASER comprehensiveness and sufficiency, ``protolm.faithfulness``) of four
   rankings of the model's own predictions on a seeded sample of the task's test data:
   ``attention``, ``gradient_x_input``, ``integrated_gradients`` (Captum, ``--steps`` steps)
   and ``random``;
2. the cost per sentence of each, one sentence at a time, methods taken in turn on each
   sentence so that the load of other work on the machine falls on all of them alike:
   attention = tokenise + one PyTorch forward pass; gradient×input = tokenise + forward +
   backward; IG = tokenise + forward + ``--steps`` forward and backward passes; Explain =
   tokenise + one run of the bundle's served fp32 ONNX graph (what the service's Explain
   pays for the model, before formatting its reply). Wall and CPU time are both recorded.

Results are printed and written as JSON (default ``docs/results/attribution.json``), one entry
per task, each with the command and settings that produced it; running a task again replaces
its entry and keeps the others:

    python benchmarks/attribution.py runs/models/sst2 runs/models/sst5 runs/models/mrpc runs/models/imdb \\
        --samples 100 --samples-for imdb=40 --timed 20 --steps 50
    python benchmarks/attribution.py --table     # the results file as docs/results.md's table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RANKINGS = ("attention", "gradient_x_input", "integrated_gradients", "random")
METHODS = ("attention", "gradient_x_input", "integrated_gradients", "explain_onnx_fp32")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(function) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    function()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def _summary(seconds: list[float]) -> dict:
    return {"median_ms": 1000 * statistics.median(seconds), "mean_ms": 1000 * statistics.fmean(seconds)}


def load_test_data(model_dir: Path, label_names: list[str], samples: int, seed: int):
    from protolm.data import DataSource, load_split, validation_split_name
    from protolm.pipeline import training_data_config

    # a model still being evaluated by `protolm train` has no training record yet: its folder names the task
    task = training_data_config(model_dir).task if (model_dir / "training.json").is_file() else model_dir.parent.name
    source = DataSource(task=task, data_dir=os.environ.get("PROTOLM_DATA_DIR"))
    split = validation_split_name(source)
    return task, load_split(source, split, label_names=label_names).sample(samples, seed)


def load_bundle(bundle_dir: Path, wait_seconds: float):
    """The served bundle; while ``wait_seconds`` last, a bundle not (completely) written yet is
    waited for, so that faithfulness can start while `protolm export` still runs."""
    from core.errors import BundleError
    from service.served_bundle import ServedBundle

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return ServedBundle.load(bundle_dir)
        except BundleError:
            if time.monotonic() > deadline:
                raise
            time.sleep(15)


def time_methods(model, bundle_dir: Path, data, count: int, steps: int, threads: int, bundle_wait: float = 0.0) -> dict:
    """Per-sentence wall and CPU seconds of each method, round-robin over the first ``count``
    sentences of ``data``, after one untimed warm-up sentence."""
    import torch

    from core.bundle import GRAPH_OUTPUTS
    from core.errors import BundleError
    from protolm.faithfulness import (
        gradient_x_input_scores,
        integrated_gradients_scores,
    )
    from service.backend import OnnxBackend

    try:
        bundle = load_bundle(bundle_dir, bundle_wait)
    except BundleError as exc:  # no served graph to time (yet): the PyTorch methods are still measured
        print(f"not timing Explain: {exc}", flush=True)
        bundle = None
    else:
        session = bundle.session(bundle.choose_variant(preferred="fp32"), options=OnnxBackend.session_options(intra_op_threads=threads))

    def inputs(i):
        return [data.texts[i]], ([data.text_pairs[i]] if data.is_pair else None)

    def attention(i):
        with torch.inference_mode():
            model(**model.tokenize(*inputs(i)))

    def gradient_x_input(i):
        gradient_x_input_scores(model, dict(model.tokenize(*inputs(i))))

    def integrated_gradients(i):
        integrated_gradients_scores(model, dict(model.tokenize(*inputs(i))), steps=steps)

    def explain(i):
        session.run(list(GRAPH_OUTPUTS), bundle.encode(*inputs(i)))

    methods = dict(zip(METHODS, (attention, gradient_x_input, integrated_gradients, explain)))
    if bundle is None:
        del methods["explain_onnx_fp32"]
    for method in methods.values():
        method(0)
    wall = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    tokens = []
    for i in range(min(count, len(data))):
        tokens.append(int(model.tokenize(*inputs(i))["attention_mask"].sum()))
        for name, method in methods.items():
            w, c = _timed(partial(method, i))
            wall[name].append(w)
            cpu[name].append(c)
    return {
        "sentences": len(tokens),
        "mean_tokens": statistics.fmean(tokens),
        "wall": {name: _summary(v) for name, v in wall.items()},
        "cpu": {name: _summary(v) for name, v in cpu.items()},
    }


def run_task(task_dir: Path, samples: int, timed: int, steps: int, threads: int, rankings: tuple[str, ...], seed: int,
             bundle_wait: float = 0.0) -> dict:
    from protolm.faithfulness import evaluate_faithfulness, integrated_gradients_scores
    from protolm.model import load_model

    model = load_model(task_dir / "model")
    task, data = load_test_data(task_dir / "model", model.config.label_names, samples, seed)
    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), _cpu_seconds()
    faithfulness = evaluate_faithfulness(
        model, data, batch_size=16, seed=seed, progress=False, rankings=rankings,
        rankers={"integrated_gradients": partial(integrated_gradients_scores, steps=steps),
                 "integrated_gradients_l2": partial(integrated_gradients_scores, steps=steps, norm=True)},
    )
    faithfulness_seconds = (time.perf_counter() - wall, _cpu_seconds() - cpu)
    timing = time_methods(model, task_dir / "bundle", data, timed, steps, threads, bundle_wait)
    result = {
        "task": task,
        "model": str(task_dir / "model"),
        "data": data.name,
        "samples": len(data),
        "faithfulness": faithfulness.as_dict(),
        "aopc": {
            metric: {r: float(np.mean(v)) for r, v in getattr(faithfulness, metric).items()}
            for metric in ("comprehensiveness", "sufficiency")
        },
        "faithfulness_seconds": {"wall": faithfulness_seconds[0], "cpu": faithfulness_seconds[1]},
        "timing": timing,
        "load_average": {"before": load_before[0], "after": os.getloadavg()[0]},
    }
    print(render(result), flush=True)
    return result


def render(result: dict) -> str:
    timing = result["timing"]
    head = f"{result['task']}: {result['samples']} examples ({result['data']})"
    lines = [f"{head}, timing on {timing['sentences']} sentences of {timing['mean_tokens']:.1f} tokens on average"]
    aopc = result["aopc"]
    for ranking in aopc["comprehensiveness"]:
        lines.append(f"  {ranking:>24}  comprehensiveness AOPC {aopc['comprehensiveness'][ranking]:.3f}"
                     f"  sufficiency AOPC {aopc['sufficiency'][ranking]:.3f}")
    wall, cpu = timing["wall"], timing["cpu"]
    for method in wall:
        lines.append(f"  {method:>24}  {wall[method]['median_ms']:9.1f} ms wall (median)  {cpu[method]['median_ms']:9.1f} ms CPU")
    lines.append(f"  load average {result['load_average']['before']:.2f} -> {result['load_average']['after']:.2f}")
    return "\n".join(lines)


LABELS = {
    "attention": "attention (proto-lm's own)",
    "gradient_x_input": "gradient×input (L2)",
    "integrated_gradients": "Integrated Gradients (signed)",
    "integrated_gradients_l2": "Integrated Gradients (L2)",
    "random": "random",
}
COSTS = {"attention": "attention", "gradient_x_input": "gradient_x_input", "integrated_gradients": "integrated_gradients"}


def markdown_table(tasks: list[dict]) -> str:
    """The results file as the Markdown table of docs/results.md: AOPC and @20% per ranking,
    and the median cost per sentence (wall and CPU), Explain's in the ranking-free row."""
    lines = [
        "| task | ranking | comprehensiveness AOPC ↑ | @20% ↑ | sufficiency AOPC ↓ | @20% ↓ | ms per sentence, wall | ms per sentence, CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task in tasks:
        f, wall, cpu = task["faithfulness"], task["timing"]["wall"], task["timing"]["cpu"]
        at20 = f["fractions"].index(0.2)
        for ranking, values in f["comprehensiveness"].items():
            cost = COSTS.get(ranking)
            cells = [
                f"{task['aopc']['comprehensiveness'][ranking]:.3f}",
                f"{values[at20]:.3f}",
                f"{task['aopc']['sufficiency'][ranking]:.3f}",
                f"{f['sufficiency'][ranking][at20]:.3f}",
                f"{wall[cost]['median_ms']:.0f}" if cost else "–",
                f"{cpu[cost]['median_ms']:.0f}" if cost else "–",
            ]
            lines.append(f"| {task['task']} | {LABELS.get(ranking, ranking)} | " + " | ".join(cells) + " |")
        explain = "explain_onnx_fp32"
        if explain in wall:
            lines.append(f"| {task['task']} | served Explain (ONNX fp32, attention) | | | | | {wall[explain]['median_ms']:.0f} | {cpu[explain]['median_ms']:.0f} |")
    return "\n".join(lines)


def write_result(path: Path, result: dict) -> None:
    """Adds ``result`` to the file's tasks, replacing an earlier result for the same task."""
    tasks = json.loads(path.read_text())["tasks"] if path.is_file() else []
    tasks = [t for t in tasks if t["task"] != result["task"]] + [result]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tasks": tasks}, indent=2) + "\n")


def parse_samples_for(text: str) -> dict[str, int]:
    pairs = [item.split("=") for item in text.split(",") if item]
    return {task: int(n) for task, n in pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task_dirs", nargs="*", type=Path, help="directories holding model/ and bundle/")
    parser.add_argument("--samples", type=int, default=100, help="test examples per task for faithfulness")
    parser.add_argument("--samples-for", type=parse_samples_for, default={}, help="per-task overrides, e.g. imdb=40")
    parser.add_argument("--timed", type=int, default=20, help="sentences timed per task, one at a time")
    parser.add_argument("--steps", type=int, default=50, help="Integrated Gradients steps")
    parser.add_argument("--threads", type=int, default=1, help="threads for PyTorch and ONNX Runtime alike")
    parser.add_argument("--rankings", default=",".join(RANKINGS), help="comma-separated faithfulness rankings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle-wait", type=float, default=0.0, help="seconds to wait for a bundle still being exported")
    parser.add_argument("--output", type=Path, default=Path("docs/results/attribution.json"))
    parser.add_argument("--table", action="store_true", help="print the results file as a Markdown table and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.output.read_text())["tasks"]))
        return 0
    if not args.task_dirs:
        parser.error("give at least one task directory (or --table)")

    import torch

    torch.set_num_threads(args.threads)
    for task_dir in args.task_dirs:  # each task written when done, so that a long run keeps what it has
        samples = args.samples_for.get(task_dir.name, args.samples)
        result = run_task(task_dir, samples, args.timed, args.steps, args.threads, tuple(args.rankings.split(",")), args.seed,
                          args.bundle_wait)
        run = {
            "command": " ".join(["python", "benchmarks/attribution.py", *(argv if argv is not None else sys.argv[1:])]),
            "steps": args.steps,
            "threads": args.threads,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        }
        write_result(args.output, {**result, "run": run})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
