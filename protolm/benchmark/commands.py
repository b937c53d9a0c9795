"""``protolm benchmark run`` and ``protolm benchmark report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from protolm.benchmark.config import BenchmarkConfig, ReportConfig
from core.options import add_options, from_namespace


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _run(args: argparse.Namespace) -> int:
    from protolm.benchmark.runner import pending, run_specs
    from protolm.benchmark.suites import build_suites

    config = from_namespace(BenchmarkConfig, args)
    specs = build_suites(_split(config.suites) or [], config.profile, _split(config.tasks), config.encoder)
    results_dir = Path(config.results_dir)
    if config.dry_run:
        todo = pending(specs, results_dir, config.retry_failed)
        print(f"{len(todo)} of {len(specs)} runs to do:")
        for spec in todo:
            print(f"  {spec.run_id}")
        return 0
    counts = run_specs(specs, results_dir, Path(config.runs_dir), config.data_dir, config.retry_failed)
    print(f"{counts['ok']} runs ok, {counts['failed']} failed; results in {results_dir}")
    print("tables and plots: protolm benchmark report")
    return 1 if counts["failed"] else 0


def _report(args: argparse.Namespace) -> int:
    from protolm.benchmark.report import write_report

    config = from_namespace(ReportConfig, args)
    for path in write_report(Path(config.results_dir), Path(config.output), Path(config.plots_dir) if config.plots else None):
        print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    benchmark = subparsers.add_parser(
        "benchmark",
        help="proto-lm against its baseline head on the paper's tasks, faithfulness and ablations",
        description="`run` trains and evaluates every run of the chosen suites (resuming where it stopped) and "
        "writes one JSON result per run; `report` builds the Markdown tables and the plots from those files.",
    )
    actions = benchmark.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run what is not done yet; one JSON result file per run")
    add_options(run, BenchmarkConfig)
    run.set_defaults(handler=_run)
    report = actions.add_parser("report", help="Markdown tables and PNG plots from the result files")
    add_options(report, ReportConfig)
    report.set_defaults(handler=_report)
