"""The layering of the packages, from their imports.

core (torch-free) at the bottom; protolm (training) and export on one side of it, service
(serving) on the other; cli on top. Every import statement counts, including the ones inside
functions: a lazy import of torch in the serving side is still a way for torch to load.
"""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "protolm", "export", "service", "cli")
TRAINING_LIBRARIES = {"torch", "transformers", "datasets", "accelerate", "safetensors", "onnx", "onnxscript"}
SERVING_LIBRARIES = {"onnxruntime", "grpc", "grpc_health", "grpc_reflection", "prometheus_client", "google"}

# What each package may not import (top-level module names).
FORBIDDEN = {
    "core": TRAINING_LIBRARIES | SERVING_LIBRARIES | {"protolm", "export", "service", "cli"},
    "service": TRAINING_LIBRARIES | {"protolm", "export", "cli"},
    "protolm": {"export", "service", "cli"},
    "export": {"service", "cli"},
    "cli": set(),
}


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, wherever the import statement is."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def package_imports() -> dict[str, dict[str, set[str]]]:
    return {
        package: {str(path.relative_to(REPO)): imports_of(path) for path in sorted((REPO / package).rglob("*.py"))}
        for package in PACKAGES
    }


def test_the_scan_sees_the_imports_it_must_judge():
    scanned = package_imports()
    assert "torch" in scanned["protolm"]["protolm/layers.py"]
    assert "grpc" in scanned["service"]["service/server.py"]
    assert "faiss" in scanned["service"]["service/served_bundle.py"]  # imported inside a method
    assert {"protolm", "service"} <= set().union(*scanned["cli"].values())


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_across_or_up_the_layers(package):
    violations = [
        f"{path} imports {name}"
        for path, names in package_imports()[package].items()
        for name in sorted(names & FORBIDDEN[package])
    ]
    assert not violations, "\n".join(violations)


def test_the_bundle_contract_is_the_only_thing_training_and_serving_share():
    """Export writes the bundle through core.bundle; nothing on the training side reads the serving side."""
    writer = imports_of(REPO / "export" / "pipeline.py")
    assert "core" in writer and "service" not in writer
    reader = imports_of(REPO / "service" / "served_bundle.py")
    assert "core" in reader and not reader & {"protolm", "export"}


SERVING_COMMANDS_SCRIPT = r"""
import sys
from cli.main import main

for argv in (["--help"], ["serve", "--help"], ["classify", "--help"], ["health", "--help"], ["bundle", "verify", "--help"]):
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
import service.server  # noqa: E402,F401
loaded = sorted(name for name in ("torch", "transformers", "datasets", "onnx") if name in sys.modules)
print("loaded:", ",".join(loaded) or "none")
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the full install (torch present) is what this checks")
def test_serving_commands_leave_torch_unloaded_on_the_full_install():
    """With torch installed, `protolm --help`, the serving commands and the server module never load it."""
    result = subprocess.run([sys.executable, "-c", SERVING_COMMANDS_SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "loaded: none"
