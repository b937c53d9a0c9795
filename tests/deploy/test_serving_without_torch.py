"""The serving images install protolm with the `serve` extra only: no torch, no transformers
(deploy/install-serve.sh). Their ENTRYPOINT (`protolm serve`) and HEALTHCHECK (`protolm
health`) must work there. Here both run with torch and transformers made unimportable, the way
they are missing from the image.

(Found by building the serving environment with deploy/install-serve.sh: `protolm serve`
failed there with "No module named 'torch'", because protolm/cli.py imports every command
module and protolm.commands imports torch through protolm.config -> protolm.layers.)"""

import subprocess
import sys
from pathlib import Path

import pytest

NO_TORCH = """
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
"""
PROTOLM = str(Path(sys.executable).parent / "protolm")


def run_without_torch(tmp_path, *args) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(NO_TORCH)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(tmp_path)}
    return subprocess.run([PROTOLM, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_torch_is_really_blocked(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_TORCH)
    result = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path)}, timeout=60)
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr


@pytest.mark.parametrize("command", [("serve", "--help"), ("health", "--help"), ("classify", "--help"), ("explain", "--help")])
def test_serving_image_commands_start_without_torch(tmp_path, command):
    result = run_without_torch(tmp_path, *command)
    assert result.returncode == 0, result.stderr[-3000:]


def test_serve_without_torch_gets_as_far_as_the_bundle(tmp_path):
    result = run_without_torch(tmp_path, "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1", str(tmp_path / "no-bundle"))
    assert "No module named" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 3 and "no such bundle directory" in result.stderr


def test_training_commands_are_left_out_without_torch(tmp_path):
    result = run_without_torch(tmp_path, "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "serve" in result.stdout and "explain" in result.stdout
    assert "train" not in result.stdout.split("positional arguments")[1].split("options")[0]
