"""Runs benchmark specs one by one, one result file each, resuming where a previous call stopped
(a run cut off mid-training goes on from its training checkpoints).

A result file is written as ``running`` before a run starts and rewritten as ``ok`` or
``failed`` (with the traceback) when it ends, so a run that died with its process (killed,
out of memory) is still on record; the next call re-runs ``running`` and, when asked,
``failed`` runs, and skips the ``ok`` ones.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import time
import traceback
from pathlib import Path

from protolm.benchmark.protocols import load_task_data
from protolm.benchmark.suites import RunSpec
from protolm.config import DataConfig, EvalConfig, ModelOptions, OptimConfig, TrainConfig
from protolm.pipeline import run_training
from protolm.training_record import TrainingRecord

log = logging.getLogger(__name__)
OK, FAILED, RUNNING = "ok", "failed", "running"


def hardware() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def train_config(spec: RunSpec, output_dir: Path, data_dir: str | None) -> TrainConfig:
    optim_fields = {f.name for f in dataclasses.fields(OptimConfig)}
    model_overrides = {k: v for k, v in spec.overrides.items() if k not in optim_fields}
    optim_overrides = {k: v for k, v in spec.overrides.items() if k in optim_fields}
    return TrainConfig(
        data=DataConfig(task=spec.task, data_dir=data_dir, max_train_samples=spec.budget.train_samples),
        model=ModelOptions(architecture=spec.architecture, encoder=spec.encoder, **model_overrides),
        optim=OptimConfig(output_dir=str(output_dir), epochs=spec.budget.epochs, seed=spec.seed, **optim_overrides),
    )


def execute(spec: RunSpec, runs_dir: Path, data_dir: str | None) -> dict:
    """Train and evaluate one spec; returns the measured part of its result record."""
    task_data = load_task_data(spec.task, spec.budget, spec.seed, data_dir)
    output_dir = runs_dir / spec.run_id
    config = train_config(spec, output_dir, data_dir)
    eval_config = EvalConfig(faithfulness=spec.budget.faithfulness_samples is not None,
                             faithfulness_samples=spec.budget.faithfulness_samples, seed=0)
    started = time.perf_counter()
    _, _, report = run_training(config, eval_config, task_data.splits)
    seconds = time.perf_counter() - started
    training = TrainingRecord.read(output_dir)
    if not spec.keep_model:
        shutil.rmtree(output_dir, ignore_errors=True)
    splits, evaluation = task_data.splits, report.as_dict()
    return {
        "protocol": task_data.protocol,
        "data": {
            "train": {"name": splits.train.name, "examples": len(splits.train), "available": task_data.train_available},
            "selection": {"name": splits.validation.name, "examples": len(splits.validation)},
            "test": {"name": splits.test.name, "examples": len(splits.test), "available": task_data.test_available},
        },
        "settings": dataclasses.asdict(training.config),
        **{key: evaluation[key] for key in ("accuracy", "macro_f1", "confusion", "faithfulness", "prototypes")},
        "projection": training.projection,
        "training_seconds": training.training_seconds,
        "total_seconds": seconds + training.earlier_training_seconds,  # a resumed run's earlier calls count
        "model_dir": str(output_dir) if spec.keep_model else None,
    }


def _write(path: Path, record: dict) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    partial.replace(path)


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _same_settings(recorded: dict | None, spec: RunSpec) -> bool:
    """Whether a record was made with this spec's settings. Keeping the model and the suite's
    number of seeds change nothing about one run."""

    def relevant(values: dict) -> dict:
        budget = {k: v for k, v in values["budget"].items() if k != "seeds"}
        return {**{k: v for k, v in values.items() if k != "keep_model"}, "budget": budget}

    return recorded is not None and relevant(recorded) == relevant(spec.as_dict())


def pending(specs: list[RunSpec], results_dir: Path, retry_failed: bool) -> list[RunSpec]:
    """The specs still to run: no record, an interrupted one, one recorded with other
    settings (a changed budget, say), or (when asked) a failed one."""
    todo = []
    for spec in specs:
        record = read_record(results_dir / f"{spec.run_id}.json")
        status = record.get("status") if record and _same_settings(record.get("spec"), spec) else None
        if status == OK or (status == FAILED and not retry_failed):
            continue
        todo.append(spec)
    return todo


def run_specs(specs: list[RunSpec], results_dir: Path, runs_dir: Path, data_dir: str | None = None,
              retry_failed: bool = False) -> dict[str, int]:
    """Run what is pending; returns how many runs ended ok and failed in this call."""
    from tqdm.auto import tqdm

    results_dir.mkdir(parents=True, exist_ok=True)
    todo = pending(specs, results_dir, retry_failed)
    log.info("%d of %d runs to do (results in %s)", len(todo), len(specs), results_dir)
    counts = {OK: 0, FAILED: 0}
    context = {"hardware": hardware(), "git_commit": _git_commit()}
    for spec in tqdm(todo, desc="benchmark", unit="run"):
        path = results_dir / f"{spec.run_id}.json"
        record = {"spec": spec.as_dict(), **context, "status": RUNNING,
                  "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        _write(path, record)
        log.info("run %s", spec.run_id)
        try:
            record.update(execute(spec, runs_dir, data_dir), status=OK)
        except Exception as exc:  # a crashed run is recorded, and the suite goes on
            log.exception("run %s failed", spec.run_id)
            record.update(status=FAILED, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        _write(path, record)
        counts[record["status"]] += 1
    return counts


def load_records(results_dir: Path) -> list[dict]:
    return [r for r in (read_record(p) for p in sorted(results_dir.glob("*.json"))) if r is not None]

