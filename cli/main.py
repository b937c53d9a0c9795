"""The ``protolm`` command, on top of every package; nothing imports it.

Each side contributes its subcommands through a ``commands`` module with a
``register(subparsers)`` function that imports only argparse and config dataclasses; the
heavy imports happen inside the handler that runs, so ``protolm --help`` is fast and
``protolm serve`` never imports torch (``tests/unit/test_layering.py`` checks both). A serving
install (``protolm[serve]``, no torch) gets only the serving commands.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from cli import explain, report
from core.errors import ProtoLMError

OWN_PACKAGES = ("core", "protolm", "export", "service", "cli")
TRAINING_NEEDS = ("torch", "transformers")
SERVING_NEEDS = ("grpc", "onnxruntime", "tokenizers")
# Each command module with the distributions it needs; a module whose needs are not installed
# (torch in a serving image, say) is left out of the CLI instead of breaking it.
COMMAND_MODULES = (
    ("protolm.commands", TRAINING_NEEDS),
    ("protolm.benchmark.commands", TRAINING_NEEDS),
    ("export.commands", (*TRAINING_NEEDS, "onnx")),
    ("service.commands", SERVING_NEEDS),
)


def _installed(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ImportError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protolm", description="Interpretable text classification with prototypes.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback instead of one line")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, needs in COMMAND_MODULES:
        if all(_installed(name) for name in needs):
            importlib.import_module(module_name).register(subparsers)
    training, serving = all(map(_installed, TRAINING_NEEDS)), all(map(_installed, SERVING_NEEDS))
    explain.register(subparsers, local=training, remote=serving)
    report.register(subparsers, training=training, serving=serving)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # --log-level applies to protolm's own packages; libraries (faiss's loader, ONNX Runtime's
    # optimizer, ...) speak only to warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for package in OWN_PACKAGES:
        logging.getLogger(package).setLevel(args.log_level.upper())
    try:
        return int(args.handler(args) or 0)
    except ProtoLMError as exc:
        if args.debug:
            raise
        print(f"protolm {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
