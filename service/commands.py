"""``protolm serve`` and the client commands ``protolm classify`` / ``protolm health``.

``protolm explain HOST:PORT TEXT`` (explaining through a running server) is dispatched from
``protolm.commands`` to :func:`explain_remote` here.
"""

from __future__ import annotations

import argparse
import json
import sys

from protolm.options import add_options, from_namespace
from service.config import ServerConfig

CLIENT_OPTIONS = (
    ("--token", "PROTOLM_CLIENT_TOKEN", "bearer token sent with every call"),
    ("--tls-ca", "PROTOLM_CLIENT_TLS_CA", "PEM CA certificate that signed the server's certificate (enables TLS)"),
)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from service.server import serve

    config = from_namespace(ServerConfig, args, bundle_dir=args.bundle or args.bundle_dir)
    asyncio.run(serve(config))
    return 0


def _client(args: argparse.Namespace, target: str):
    from service.client import ProtoLMClient

    return ProtoLMClient(target, token=args.token, tls_ca=args.tls_ca, timeout=args.timeout)


def use_colour(choice: str) -> bool:
    """The --colour choice of `protolm explain`: auto means when printing to a terminal."""
    return {"auto": sys.stdout.isatty(), "always": True, "never": False}[choice]


def _classify(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    with _client(args, args.server) as client:
        response = client.classify(args.texts, [args.pair] * len(args.texts) if args.pair is not None else None)
    if args.json:
        print(json.dumps(MessageToDict(response), indent=2))
        return 0
    for text, result in zip(args.texts, response.results):
        probabilities = "  ".join(f"{p.label} {p.probability:.3f}" for p in result.probabilities)
        print(f"{result.label:<14} ({probabilities})  {text}{'  [truncated]' if result.truncated else ''}")
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(args, args.server) as client:
        status = client.health()
    print(status)
    return 0 if status == "SERVING" else 1


def explain_remote(args: argparse.Namespace) -> int:
    """`protolm explain HOST:PORT TEXT`: the explanation of a running server, rendered."""
    from protolm.rendering import render
    from service.client import to_explanation

    with _client(args, args.target) as client:
        response = client.explain([args.text], [args.pair] if args.pair is not None else None, top_prototypes=args.top_prototypes)
    print(render(to_explanation(args.text, args.pair, response.results[0]), colour=use_colour(args.colour)))
    return 0


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments `protolm explain` takes after its target, wherever it is registered."""
    parser.add_argument("text", help="the text to classify and explain")
    parser.add_argument("--pair", default=None, help="second text, for sentence-pair models")
    parser.add_argument("--top-prototypes", type=int, default=3, help="how many nearest prototypes to show")
    parser.add_argument("--colour", choices=("auto", "always", "never"), default="auto", help="shade words by attention")


def add_client_options(parser: argparse.ArgumentParser, with_server: bool = True) -> None:
    import os

    if with_server:
        parser.add_argument("--server", default=os.environ.get("PROTOLM_SERVER", "localhost:50051"), help="server address [env PROTOLM_SERVER]")
    for flag, env, help_text in CLIENT_OPTIONS:
        parser.add_argument(flag, default=os.environ.get(env), help=f"{help_text} [env {env}]")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the reply")


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve a bundle over gRPC (Classify, Explain) with Prometheus metrics",
        description="Every option is also a PROTOLM_* environment variable. SIGTERM drains, SIGHUP reloads the bundle.",
    )
    serve.add_argument("bundle", nargs="?", default=None, help="bundle directory (or --bundle-dir / PROTOLM_BUNDLE_DIR)")
    add_options(serve, ServerConfig)
    serve.set_defaults(handler=_serve)

    classify = subparsers.add_parser("classify", help="classify texts with a running server")
    classify.add_argument("texts", nargs="+", help="texts to classify")
    classify.add_argument("--pair", default=None, help="second text for every input (pair models)")
    classify.add_argument("--json", action="store_true", help="print the raw response as JSON")
    add_client_options(classify)
    classify.set_defaults(handler=_classify)

    if "explain" not in subparsers.choices:  # a serving install: no training commands, remote explanations only
        explain = subparsers.add_parser("explain", help="explain one prediction of a running server")
        explain.add_argument("target", help="HOST:PORT of a running `protolm serve`")
        add_explain_arguments(explain)
        add_client_options(explain, with_server=False)
        explain.set_defaults(handler=explain_remote)

    health = subparsers.add_parser("health", help="ask a running server's gRPC health service; exit 0 when SERVING")
    add_client_options(health)
    health.set_defaults(handler=_health)
