"""``protolm explain TARGET TEXT``: a model directory explained by PyTorch, or a running server.

It sits with the command line because it spans both sides: a model directory needs the
training install, a HOST:PORT the serving one, and each is imported only when asked for.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from core.errors import ConfigError
from core.explanation import DEFAULT_TOP_PROTOTYPES

HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$")


def use_colour(choice: str) -> bool:
    """The --colour choice: auto means when printing to a terminal."""
    return {"auto": sys.stdout.isatty(), "always": True, "never": False}[choice]


def _explain(args: argparse.Namespace) -> int:
    colour = use_colour(args.colour)
    if Path(args.target).is_dir():
        if not args.local:
            raise ConfigError(f"{args.target} is a model directory; explaining one needs the training install (protolm[train])")
        from protolm.explain import explain_directory

        print(explain_directory(args.target, args.text, args.pair, args.top_prototypes, colour))
        return 0
    if not HOST_PORT.match(args.target):
        raise ConfigError(f"{args.target}: no such model directory, and not a HOST:PORT server address")
    if not args.remote:
        raise ConfigError(f"{args.target} is a server address; explaining through it needs the serving install (protolm[serve])")
    from service.commands import explain_remote

    return explain_remote(args, colour)


def register(subparsers, local: bool, remote: bool) -> None:
    """``local``: the training side is installed; ``remote``: the serving side is."""
    targets = " or ".join(t for t, present in (("a model directory", local), ("the HOST:PORT of a running server", remote)) if present)
    explain = subparsers.add_parser(
        "explain",
        help="explain one prediction, of a model directory or of a running server",
        description=f"TARGET is {targets}. A model directory is explained locally with PyTorch.",
    )
    explain.add_argument("target", help="model directory, or HOST:PORT of a running server")
    explain.add_argument("text", help="the text to classify and explain")
    explain.add_argument("--pair", default=None, help="second text, for sentence-pair models")
    explain.add_argument("--top-prototypes", type=int, default=DEFAULT_TOP_PROTOTYPES, help="how many nearest prototypes to show")
    explain.add_argument("--colour", choices=("auto", "always", "never"), default="auto", help="shade words by attention")
    if remote:
        from service.commands import add_client_options

        add_client_options(explain, with_server=False)
    explain.set_defaults(handler=_explain, local=local, remote=remote)
