"""Rewrites deploy/constraints.txt from the installed distributions that
protolm[train,export,serve,tracing] needs, at the versions installed in the running interpreter.

    .venv/bin/python deploy/freeze_constraints.py      # after `make install` and a green `make test`

torch is left out: the images pin it with the TORCH_VERSION build argument and install it
from the CPU wheel index.
"""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
EXTRAS = ("train", "export", "serve", "tracing")
LEFT_OUT = {"protolm", "torch"}


def needed(name: str = "protolm", extras: tuple[str, ...] = EXTRAS, seen: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Every distribution ``name[extras]`` pulls in, with the extras asked of it."""
    seen = {} if seen is None else seen
    dist = metadata.distribution(name)
    key = canonicalize_name(dist.metadata["Name"])
    if key in seen and set(extras) <= seen[key]:
        return seen
    seen.setdefault(key, set()).update(extras)
    for line in dist.requires or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not any(requirement.marker.evaluate({"extra": e}) for e in (extras or ("",))):
            continue
        try:
            needed(requirement.name, tuple(requirement.extras), seen)
        except metadata.PackageNotFoundError:
            pass  # an optional dependency this platform does not install
    return seen


def main() -> None:
    path = HERE / "constraints.txt"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    pins = [f"{key}=={metadata.version(key)}" for key in sorted(needed()) if key not in LEFT_OUT]
    path.write_text("\n".join(header + pins) + "\n")
    print(f"{path}: {len(pins)} pins")


if __name__ == "__main__":
    main()
