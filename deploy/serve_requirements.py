"""Prints the serving image's extras of pyproject.toml (`serve`, and `tracing` for
`protolm serve --tracing`) as pip requirement lines, one a line.

    python3 serve_requirements.py PYPROJECT [cpu|gpu]

`gpu` swaps the CPU builds for CUDA ones: onnxruntime for onnxruntime-gpu and faiss-cpu for
faiss-gpu-cu12, at the exact versions in $ONNXRUNTIME_GPU_VERSION and $FAISS_GPU_VERSION
(deploy/Dockerfile's build arguments). Both ship the same import name as the CPU build, so
installing the two side by side would leave whichever came last; this keeps only one.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib

IMAGE_EXTRAS = ("serve", "tracing")
CPU_TO_GPU = {"onnxruntime": ("onnxruntime-gpu", "ONNXRUNTIME_GPU_VERSION"), "faiss-cpu": ("faiss-gpu-cu12", "FAISS_GPU_VERSION")}


def requirement_name(line: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", line).group(0).lower().replace("_", "-")


def serve_requirements(pyproject: dict, flavour: str = "cpu", environ: dict | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    extras = pyproject["project"]["optional-dependencies"]
    lines = list(pyproject["project"]["dependencies"]) + [line for extra in IMAGE_EXTRAS for line in extras[extra]]
    if flavour == "cpu":
        return lines
    if flavour != "gpu":
        raise ValueError(f"flavour must be cpu or gpu, not {flavour!r}")
    out = []
    for line in lines:
        swap = CPU_TO_GPU.get(requirement_name(line))
        if swap is None:
            out.append(line)
            continue
        name, variable = swap
        version = environ.get(variable)
        if not version:
            raise SystemExit(f"serve_requirements.py: set {variable} to the {name} version to install")
        out.append(f"{name}=={version}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(argv[0], "rb") as handle:
        pyproject = tomllib.load(handle)
    print("\n".join(serve_requirements(pyproject, argv[1] if len(argv) == 2 else "cpu")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
