"""``protolm serve``, ``protolm bundle verify`` and the client commands ``protolm classify`` / ``protolm health``.

``protolm explain HOST:PORT TEXT`` is registered by the command line (``cli.explain``), which
calls :func:`explain_remote` here.
"""

from __future__ import annotations

import argparse
import contextlib
import json

from core.errors import RemoteError
from core.options import add_options, from_namespace
from service.config import ClientConfig, PredictConfig, ServerConfig


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from service.server import serve

    config = from_namespace(ServerConfig, args, bundle_dir=args.bundle or args.bundle_dir)
    asyncio.run(serve(config))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import sys

    from service.predict import describe, run

    config = from_namespace(PredictConfig, args)
    print(describe(run(config)), file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from service.served_bundle import ServedBundle

    bundle = ServedBundle.load(args.bundle_dir)
    manifest = bundle.manifest
    print(f"{args.bundle_dir}: every file matches its size and sha256")
    for name, entry in manifest.files.items():
        print(f"  {name:<22} {entry.size:>12,} bytes  {entry.sha256[:16]}")
    for line in bundle.smoke_test():
        print(f"  {line}")
    print(f"{args.bundle_dir}: ok ({manifest.model.name} {manifest.model.version}, format version {manifest.format_version})")
    return 0


@contextlib.contextmanager
def _client(config: ClientConfig, target: str | None = None):
    """A client whose failed calls become one-line errors naming the server and the status."""
    import grpc

    from service.client import ProtoLMClient

    address = target or config.server
    try:
        with ProtoLMClient(address, token=config.token, tls_ca=config.tls_ca, timeout=config.timeout) as client:
            yield client
    except grpc.RpcError as error:
        code = error.code().name
        first_line = (error.details() or "").partition("\n")[0]
        if code == "UNAVAILABLE" and "failed to connect" in first_line:  # nothing listens there
            raise RemoteError(f"UNAVAILABLE: no server at {address} (is `protolm serve` running?)", code) from None
        raise RemoteError(f"{address}: {code}: {first_line}", code) from None
    except OSError as error:  # an unreadable --tls-ca
        raise RemoteError(f"{address}: {error}") from None


def _classify(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    with _client(from_namespace(ClientConfig, args)) as client:
        response = client.classify(args.texts, [args.pair] * len(args.texts) if args.pair is not None else None)
    if args.json:
        print(json.dumps(MessageToDict(response), indent=2))
        return 0
    for text, result in zip(args.texts, response.results):
        probabilities = "  ".join(f"{p.label} {p.probability:.3f}" for p in result.probabilities)
        print(f"{result.label:<14} ({probabilities})  {text}{'  [truncated]' if result.truncated else ''}")
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(from_namespace(ClientConfig, args)) as client:
        status = client.health()
    print(status)
    return 0 if status == "SERVING" else 1


def explain_remote(args: argparse.Namespace, colour: bool) -> int:
    """`protolm explain HOST:PORT TEXT`: the explanation of a running server, rendered."""
    from core.explanation import render
    from service.client import to_explanation

    with _client(from_namespace(ClientConfig, args), args.target) as client:
        response = client.explain([args.text], [args.pair] if args.pair is not None else None, top_prototypes=args.top_prototypes)
    print(render(args.text, args.pair, to_explanation(response.results[0]), colour=colour))
    return 0


def add_client_options(parser: argparse.ArgumentParser, with_server: bool = True) -> None:
    add_options(parser, ClientConfig, skip=() if with_server else ("server",))


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve a bundle over gRPC (Classify, Explain) with Prometheus metrics",
        description="Every option is also a PROTOLM_* environment variable. SIGTERM drains, SIGHUP reloads the bundle.",
    )
    serve.add_argument("bundle", nargs="?", default=None, help="bundle directory (or --bundle-dir / PROTOLM_BUNDLE_DIR)")
    add_options(serve, ServerConfig)
    serve.set_defaults(handler=_serve)

    predict = subparsers.add_parser(
        "predict",
        help="labels (and with --explain, top words, evidence, exemplars) for a CSV / JSONL / Parquet file, as JSONL or Parquet",
        description="Runs the bundle here (no server, no torch) or, with --ray, on a Ray cluster through Ray Data. One output "
        "row per input row, in order; a re-run resumes after the rows OUTPUT already holds. Every option is also a PROTOLM_* "
        "environment variable.",
    )
    predict.add_argument("bundle_dir", metavar="BUNDLE", help="bundle directory written by `protolm export`")
    predict.add_argument("input", metavar="INPUT", help="CSV, TSV, JSONL (may be .gz) or Parquet file with a text column")
    predict.add_argument("output", metavar="OUTPUT", help="predictions: .jsonl or .parquet")
    add_options(predict, PredictConfig, skip=("bundle_dir", "input", "output"))
    predict.set_defaults(handler=_predict)

    bundle = subparsers.add_parser("bundle", help="check serving bundles")
    commands = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    verify = commands.add_parser(
        "verify",
        help="check every file's sha256, load the graphs and indexes, run a smoke input",
        description="Exits non-zero with a message naming the first bad file.",
    )
    verify.add_argument("bundle_dir", help="bundle directory written by `protolm export`")
    verify.set_defaults(handler=_verify)

    classify = subparsers.add_parser("classify", help="classify texts with a running server")
    classify.add_argument("texts", nargs="+", help="texts to classify")
    classify.add_argument("--pair", default=None, help="second text for every input (pair models)")
    classify.add_argument("--json", action="store_true", help="print the raw response as JSON")
    add_client_options(classify)
    classify.set_defaults(handler=_classify)

    health = subparsers.add_parser("health", help="ask a running server's gRPC health service; exit 0 when SERVING")
    add_client_options(health)
    health.set_defaults(handler=_health)
