"""Options of ``protolm benchmark``: each a flag and a ``PROTOLM_*`` variable."""

from __future__ import annotations

from dataclasses import dataclass

from core.options import option
from protolm.benchmark.suites import PROFILES
from protolm.encoders import DEFAULT_ENCODER

RESULTS_DIR = "docs/results"


@dataclass(frozen=True)
class BenchmarkConfig:
    suites: str = option("tasks,ablations,curves", "comma-separated suites to run: tasks (8 tasks, both models), ablations (SST-2, proto-lm), "
                         "curves (both models at 500 to 8,000 training examples on SST-2, SST-5 and MRPC), "
                         "full-data (both models on all of SST-2 and IMDb, 1 epoch: hours on a CPU)")
    tasks: str | None = option(None, "comma-separated tasks (default: every task of each suite: sst2,sst5,rte,wnli,mrpc,imdb,qnli,mnli for tasks)")
    profile: str = option("cpu", "budgets: cpu (seeded subsets, 1-2 epochs) or full (every training example, 3 epochs)", choices=tuple(PROFILES))
    encoder: str = option(DEFAULT_ENCODER, "encoder of both models: packaged name, local directory or hub name")
    results_dir: str = option(f"{RESULTS_DIR}/runs", "one JSON result file per run; existing ok results are not run again")
    runs_dir: str = option("runs/benchmark", "model directories; each is deleted after its run, except those the PCA plots draw (SST-2 ablations of each similarity)")
    data_dir: str | None = option(None, "directory with <task>/<split>.jsonl.gz files (default: $PROTOLM_DATA_DIR)")
    retry_failed: bool = option(False, "run failed runs again (interrupted runs are always run again)")
    dry_run: bool = option(False, "list the runs still to do, and stop")


@dataclass(frozen=True)
class ReportConfig:
    results_dir: str = option(f"{RESULTS_DIR}/runs", "directory of the runner's JSON result files")
    output: str = option(f"{RESULTS_DIR}/tables.md", "Markdown file the tables are written to")
    plots_dir: str = option(RESULTS_DIR, "where the PNG plots go")
    plots: bool = option(True, "also draw the plots (needs matplotlib and the kept SST-2 model)")
