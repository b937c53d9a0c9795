"""``protolm report PATH``: one self-contained HTML page about a model directory or a bundle.

It sits with the command line because it spans both sides: a model directory is read with
PyTorch (the training install), a serving bundle with ONNX Runtime and FAISS (the serving
install); each is imported only when asked for. The page itself is ``core.report``'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.bundle import MANIFEST_FILE
from core.errors import ConfigError
from core.options import add_options, from_namespace
from core.report import ReportConfig, render_html

MODEL_DIR_FILES = ("config.json", "training.json")


def _report(args: argparse.Namespace) -> int:
    path = Path(args.path)
    config = from_namespace(ReportConfig, args)
    if (path / MANIFEST_FILE).is_file():
        if not args.serving:
            raise ConfigError(f"{path} is a serving bundle; reporting on one needs the serving install (protolm[serve])")
        from service.report import bundle_report

        report = bundle_report(path, config)
    elif all((path / name).is_file() for name in MODEL_DIR_FILES):
        if not args.training:
            raise ConfigError(f"{path} is a model directory; reporting on one needs the training install (protolm[train])")
        from protolm.report import model_dir_report

        report = model_dir_report(path, config)
    elif path.is_dir():
        raise ConfigError(f"{path}: neither a model directory (no {' and '.join(MODEL_DIR_FILES)}) nor a serving bundle (no {MANIFEST_FILE})")
    else:
        raise ConfigError(f"{path}: no such model directory or serving bundle")
    output = config.output_path(path)
    try:
        output.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{output}: cannot write the report ({exc.strerror})") from None
    print(f"{output}: report on the {report.source} {path} ({len(report.prototypes)} prototypes, {len(report.examples)} explained examples)")
    return 0


def register(subparsers, training: bool, serving: bool) -> None:
    """``training``: the training side is installed; ``serving``: the serving side is."""
    kinds = " or ".join(k for k, present in (("a model directory", training), ("a serving bundle", serving)) if present)
    report = subparsers.add_parser(
        "report",
        help="write one self-contained HTML report on a model directory or a serving bundle",
        description=f"PATH is {kinds}. The page needs no server: open it in any browser.",
    )
    report.add_argument("path", metavar="PATH", help="model directory or serving bundle")
    add_options(report, ReportConfig)
    report.set_defaults(handler=_report, training=training, serving=serving)
