"""proto-lm against the plain baseline head on SST-2: same encoder, data, budget and seed.

    python benchmarks/sst2_vs_baseline.py                       # the full training set, 1 epoch
    python benchmarks/sst2_vs_baseline.py --max-train-samples 8000

Prints both validation accuracies side by side and writes them to --output (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

from protolm.config import DataConfig, ModelOptions, OptimConfig, TrainConfig
from protolm.pipeline import EvalConfig, run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-train-samples", type=int, default=None, help="seeded subset of the training set (default: all 67,349)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--runs-dir", default="runs/benchmark-sst2")
    parser.add_argument("--output", default="runs/benchmark-sst2/results.json")
    args = parser.parse_args()

    rows = []
    for architecture in ("protolm", "baseline"):
        config = TrainConfig(
            data=DataConfig(task="sst2", max_train_samples=args.max_train_samples),
            model=ModelOptions(architecture=architecture, encoder=args.encoder),
            optim=OptimConfig(output_dir=f"{args.runs_dir}/{architecture}", epochs=args.epochs, seed=args.seed),
        )
        started = time.perf_counter()
        _, _, report = run_training(config, EvalConfig(faithfulness=architecture == "protolm"))
        rows.append({
            "architecture": architecture,
            "accuracy": report.metrics.accuracy,
            "macro_f1": report.metrics.macro_f1,
            "seconds": time.perf_counter() - started,
            "comprehensiveness_20": report.faithfulness.at("comprehensiveness", "attention", 0.2) if report.faithfulness else None,
            "settings": {"data": asdict(config.data), "optim": asdict(config.optim)},
        })
    result = {"task": "sst2", "encoder": args.encoder, "hardware": platform.processor() or platform.machine(), "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nSST-2 validation, encoder {args.encoder}, train samples {args.max_train_samples or 'all'}, epochs {args.epochs}")
    print(f"{'model':<10} {'accuracy':>9} {'macro-F1':>9} {'minutes':>8}")
    for row in rows:
        print(f"{row['architecture']:<10} {row['accuracy']:>9.4f} {row['macro_f1']:>9.4f} {row['seconds'] / 60:>8.1f}")
    print(f"proto-lm - baseline: {100 * (rows[0]['accuracy'] - rows[1]['accuracy']):+.2f} points")


if __name__ == "__main__":
    main()
