"""``protolm export`` and ``protolm bundle verify``."""

from __future__ import annotations

import argparse

from export.config import ExportConfig
from protolm.options import add_options, from_namespace


def _export(args: argparse.Namespace) -> int:
    from export.pipeline import run_export
    from service.bundle import Bundle

    path = run_export(args.model_dir, args.bundle_dir, from_namespace(ExportConfig, args))
    bundle = Bundle.load(path, verify_checksums=False)
    print(f"\nbundle {path}: {bundle.name} {bundle.version}")
    print(f"  {'variant':<10} {'file':<22} {'device':<6} {'accuracy':>8} {'agreement':>9}  servable")
    for variant in bundle.variants:
        print(f"  {variant.name:<10} {variant.file:<22} {variant.device:<6} {variant.accuracy:>8.4f} {variant.agreement:>9.4f}  {variant.servable}")
    for name, index in bundle.indexes.items():
        print(f"  {name} index: {index.kind}, {index.count} vectors, recall@10 {index.recall_at_10:.3f}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from service.bundle import Bundle

    bundle = Bundle.load(args.bundle_dir)
    print(f"{args.bundle_dir}: every file matches its size and sha256")
    for name, entry in bundle.manifest["files"].items():
        print(f"  {name:<22} {entry['size']:>12,} bytes  {entry['sha256'][:16]}")
    for line in bundle.smoke_test():
        print(f"  {line}")
    print(f"{args.bundle_dir}: ok ({bundle.name} {bundle.version})")
    return 0


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export",
        help="write a serving bundle: ONNX graph and variants, FAISS indexes, exemplars, manifest",
        description="Export a trained proto-lm model directory as a serving bundle (docs/bundle-format.md). "
        "Reads the training and validation data named in the model's training.json. "
        "Every option is also a PROTOLM_* environment variable.",
    )
    export.add_argument("model_dir", help="model directory written by `protolm train`")
    export.add_argument("bundle_dir", help="directory to write the bundle to")
    add_options(export, ExportConfig)
    export.set_defaults(handler=_export)

    bundle = subparsers.add_parser("bundle", help="check serving bundles")
    commands = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    verify = commands.add_parser(
        "verify",
        help="check every file's sha256, load the graphs and indexes, run a smoke input",
        description="Exits non-zero with a message naming the first bad file.",
    )
    verify.add_argument("bundle_dir", help="bundle directory written by `protolm export`")
    verify.set_defaults(handler=_verify)
