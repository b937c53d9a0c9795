"""The ``protolm`` command.

Each package contributes its subcommands through a ``commands`` module with a
``register(subparsers)`` function; the heavy imports happen only inside the handler that
runs, so ``protolm --help`` is fast and ``protolm serve`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from protolm.errors import ProtoLMError

COMMAND_MODULES = ("protolm.commands", "export.commands", "service.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protolm", description="Interpretable text classification with prototypes.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
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
