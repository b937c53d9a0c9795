"""``protolm train``, ``protolm evaluate`` and ``protolm explain``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from protolm.config import DataConfig, ModelOptions, OptimConfig, TrainConfig
from protolm.options import add_options, from_namespace
from service.commands import add_client_options, add_explain_arguments, use_colour  # argparse only: no grpc import

DEMO_SENTENCE = "a gripping, beautifully acted film that never loses its nerve"


def _print_explanations(model, texts: list[str], pairs: list[str] | None, exemplars, top: int, colour: bool) -> None:
    from protolm.explain import explain_texts
    from protolm.rendering import render

    for explanation in explain_texts(model, texts, pairs, exemplars, top_prototypes=top):
        print(render(explanation, colour=colour))
        print()


def _train(args: argparse.Namespace) -> int:
    from protolm.pipeline import EvalConfig, run_training
    from protolm.projection import load_exemplars

    data = from_namespace(DataConfig, args)
    if not (data.task or data.dataset or data.train_file):
        data = DataConfig(**{**vars(data), "task": "sst2"})
    config = TrainConfig(data=data, model=from_namespace(ModelOptions, args), optim=from_namespace(OptimConfig, args))
    model, output_dir, report = run_training(config, from_namespace(EvalConfig, args))
    print()
    print(report.render())
    print(f"\nmodel saved to {output_dir}")
    if model.config.architecture == "protolm" and not model.config.is_pair:
        print("\nexample explanation:")
        _print_explanations(model, [args.explain_text], None, load_exemplars(output_dir), 3, sys.stdout.isatty())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from protolm.pipeline import EvalConfig, run_evaluation

    report = run_evaluation(args.model_dir, from_namespace(DataConfig, args), from_namespace(EvalConfig, args))
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0


def _explain(args: argparse.Namespace) -> int:
    if not Path(args.target).is_dir():
        from service.commands import explain_remote

        return explain_remote(args)
    from protolm.model import ProtoLM
    from protolm.projection import load_exemplars

    model = ProtoLM.from_pretrained(args.target)
    pairs = [args.pair] if args.pair is not None else None
    _print_explanations(model, [args.text], pairs, load_exemplars(args.target), args.top_prototypes, use_colour(args.colour))
    return 0


def register(subparsers) -> None:
    from protolm.pipeline import EvalConfig

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
    train.add_argument("--explain-text", default=DEMO_SENTENCE, help="sentence explained after training")
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

    explain = subparsers.add_parser(
        "explain",
        help="explain one prediction, of a model directory or of a running server",
        description="TARGET is a model directory written by `protolm train` (explained locally with PyTorch) "
        "or the HOST:PORT of a running `protolm serve`.",
    )
    explain.add_argument("target", help="model directory, or HOST:PORT of a running server")
    add_explain_arguments(explain)
    add_client_options(explain, with_server=False)
    explain.set_defaults(handler=_explain)
