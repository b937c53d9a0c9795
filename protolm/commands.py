"""``protolm train`` and ``protolm evaluate``."""

from __future__ import annotations

import argparse
import json
import sys

from core.explanation import DEFAULT_TOP_PROTOTYPES
from core.options import add_options, from_namespace
from protolm.config import DataConfig, EvalConfig, ModelOptions, OptimConfig, TrainConfig

DEMO_SENTENCE = "a gripping, beautifully acted film that never loses its nerve"


def _train(args: argparse.Namespace) -> int:
    from protolm.explain import render_explanations
    from protolm.pipeline import run_training
    from protolm.projection import load_exemplars

    data = from_namespace(DataConfig, args)
    if not (data.task or data.dataset or data.train_file):
        data = DataConfig(**{**vars(data), "task": "sst2"})
    config = TrainConfig(data=data, model=from_namespace(ModelOptions, args), optim=from_namespace(OptimConfig, args))
    model, output_dir, report = run_training(config, from_namespace(EvalConfig, args))
    print()
    print(report.render())
    print(f"\nmodel saved to {output_dir}")
    if args.explain_text and model.config.architecture == "protolm" and not model.config.is_pair:
        print("\nexample explanation:")
        print(render_explanations(model, [args.explain_text], None, load_exemplars(output_dir), DEFAULT_TOP_PROTOTYPES, sys.stdout.isatty()))
        print()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from protolm.pipeline import run_evaluation

    report = run_evaluation(args.model_dir, from_namespace(DataConfig, args), from_namespace(EvalConfig, args))
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a proto-lm (or baseline) model, project its prototypes, evaluate it",
        description="Train on a named task (default sst2), a hub dataset or your own files. "
        "Every option is also a PROTOLM_* environment variable.",
    )
    add_options(train, DataConfig)
    add_options(train, ModelOptions)
    add_options(train, OptimConfig)
    add_options(train, EvalConfig, skip=("split", "batch_size", "seed"))
    train.add_argument("--explain-text", default=DEMO_SENTENCE, help="sentence explained after training ('' for none)")
    train.set_defaults(handler=_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="accuracy, macro-F1, confusion matrix, faithfulness and prototype purity of a saved model",
        description="With no data options, evaluates on the validation split of the data the model was trained on.",
    )
    evaluate.add_argument("model_dir", help="model directory written by `protolm train`")
    add_options(evaluate, DataConfig, skip=("max_train_samples", "validation_fraction"))
    add_options(evaluate, EvalConfig)
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(handler=_evaluate)
