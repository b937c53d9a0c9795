"""The ``protolm`` command.

Each package contributes its subcommands through a ``commands`` module with a
``register(subparsers)`` function; the heavy imports happen only inside the handler that
runs, so ``protolm --help`` is fast and ``protolm serve`` never imports torch. A serving
install (``protolm[serve]``, no torch) gets only the serving commands.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from protolm.errors import ProtoLMError

# Each command module with the distributions it needs; a module whose needs are not installed
# (torch in a serving image, say) is left out of the CLI instead of breaking it.
COMMAND_MODULES = (
    ("protolm.commands", ("torch", "transformers")),
    ("protolm.benchmark.commands", ("torch", "transformers")),
    ("export.commands", ("torch", "transformers", "onnx")),
    ("service.commands", ("grpc", "onnxruntime", "tokenizers")),
)


def _installed(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ImportError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protolm", description="Interpretable text classification with prototypes.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, needs in COMMAND_MODULES:
        if all(_installed(name) for name in needs):
            importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except ProtoLMError as exc:
        print(f"protolm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
