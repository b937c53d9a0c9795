"""``protolm export``."""

from __future__ import annotations

import argparse

from core.options import add_options, from_namespace
from export.config import ExportConfig


def _export(args: argparse.Namespace) -> int:
    from core.bundle import read_manifest
    from export.pipeline import run_export

    path = run_export(args.model_dir, args.bundle_dir, from_namespace(ExportConfig, args))
    manifest = read_manifest(path, verify_checksums=False)
    print(f"\nbundle {path}: {manifest.model.name} {manifest.model.version}")
    print(f"  {'variant':<10} {'file':<22} {'device':<6} {'accuracy':>8} {'lost':>6} {'agreement':>9} {'tokens':>6} {'protos':>6}  servable")
    for v in manifest.variants:
        print(f"  {v.name:<10} {v.file:<22} {v.device:<6} {v.accuracy:>8.4f} {100 * v.accuracy_drop:>+6.2f} {v.agreement:>9.4f} "
              f"{v.token_overlap:>6.3f} {v.prototype_overlap:>6.3f}  {v.servable}")
    print("  (lost: accuracy points below PyTorch's; tokens / protos: share of fp32's top-5 tokens and top-3 prototypes kept)")
    for name, index in (("prototypes", manifest.indexes.prototypes), ("examples", manifest.indexes.examples)):
        print(f"  {name} index: {index.kind}, {index.count} vectors, recall@10 {index.recall_at_10:.3f}")
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

