"""The scripts the images run: deploy/bundle-init.sh (the training image's entrypoint) and
deploy/serve_requirements.py (what deploy/install-serve.sh installs for each serving image)."""

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import write_tiny_csvs
from tests.deploy.deploy_helpers import DEPLOY, REPO


def _load_serve_requirements():
    spec = importlib.util.spec_from_file_location("deploy_serve_requirements", DEPLOY / "serve_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.serve_requirements


serve_requirements = _load_serve_requirements()

BUNDLE_INIT = DEPLOY / "bundle-init.sh"
VENV_BIN = Path(sys.executable).parent


def fake_protolm(directory: Path) -> Path:
    """A `protolm` that logs its arguments and makes the model directory and bundle it is asked for."""
    directory.mkdir()
    log = directory / "calls.log"
    script = directory / "protolm"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'case "$1" in\n'
        '  train) for last; do :; done; mkdir -p "$last" ;;\n'
        '  export) mkdir -p "$3" && echo "{}" > "$3/manifest.json" ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    return log


def run_init(tmp_path: Path, *args: str, path: str, **env) -> subprocess.CompletedProcess:
    environ = {"PATH": path, "HOME": str(tmp_path), "TMPDIR": str(tmp_path), **env}
    return subprocess.run(["sh", str(BUNDLE_INIT), *args], capture_output=True, text=True, env=environ, timeout=600)


def test_bundle_init_does_nothing_when_a_bundle_is_there(tmp_path):
    log = fake_protolm(tmp_path / "bin")
    bundle = tmp_path / "bundles" / "default"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    result = run_init(tmp_path, path=f"{tmp_path / 'bin'}:/usr/bin:/bin", PROTOLM_BUNDLE_DIR=str(bundle))
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert not log.exists()


def test_bundle_init_trains_exports_and_verifies_when_there_is_none(tmp_path):
    log = fake_protolm(tmp_path / "bin")
    bundle = tmp_path / "bundles" / "default"
    result = run_init(tmp_path, path=f"{tmp_path / 'bin'}:/usr/bin:/bin", PROTOLM_BUNDLE_DIR=str(bundle))
    assert result.returncode == 0, result.stderr
    train, export, verify = log.read_text().splitlines()
    assert train.startswith("train --task sst2 --output-dir ")  # the default arguments
    model_dir = train.split("--output-dir ")[1]
    assert export == f"export {model_dir} {bundle}"  # no --overwrite: never replace what is there unasked
    assert verify == f"bundle verify {bundle}"
    assert not Path(model_dir).exists()  # the model directory was temporary


def test_bundle_init_passes_its_arguments_to_train_and_force_replaces(tmp_path):
    log = fake_protolm(tmp_path / "bin")
    bundle = tmp_path / "bundles" / "default"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    result = run_init(tmp_path, "--task", "sst5", "--epochs", "1", path=f"{tmp_path / 'bin'}:/usr/bin:/bin",
                      PROTOLM_BUNDLE_DIR=str(bundle), PROTOLM_INIT_FORCE="1")
    assert result.returncode == 0, result.stderr
    train, export, _ = log.read_text().splitlines()
    assert train.startswith("train --task sst5 --epochs 1 --output-dir ")
    assert export.endswith(f" {bundle} --overwrite")


def test_bundle_init_stops_at_the_first_failure(tmp_path):
    (tmp_path / "bin").mkdir()
    failing = tmp_path / "bin" / "protolm"
    failing.write_text("#!/bin/sh\necho 'protolm train: error: no data' >&2\nexit 2\n")
    failing.chmod(0o755)
    result = run_init(tmp_path, path=f"{tmp_path / 'bin'}:/usr/bin:/bin", PROTOLM_BUNDLE_DIR=str(tmp_path / "b"))
    assert result.returncode == 2 and "no data" in result.stderr
    assert not (tmp_path / "b").exists()


def test_bundle_init_needs_the_bundle_directory(tmp_path):
    result = run_init(tmp_path, path="/usr/bin:/bin")
    assert result.returncode != 0 and "PROTOLM_BUNDLE_DIR" in result.stderr


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    result = subprocess.run([shellcheck, "--shell=sh", str(BUNDLE_INIT), str(DEPLOY / "install-serve.sh")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_serving_requirements_swap_in_the_gpu_builds():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    cpu = serve_requirements(pyproject, "cpu", {})
    assert cpu == pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["serve"]
    gpu = serve_requirements(pyproject, "gpu", {"ONNXRUNTIME_GPU_VERSION": "1.26.0", "FAISS_GPU_VERSION": "1.14.1.post1"})
    assert "onnxruntime-gpu==1.26.0" in gpu and "faiss-gpu-cu12==1.14.1.post1" in gpu
    assert not [r for r in gpu if r.startswith(("onnxruntime>", "onnxruntime=", "faiss-cpu"))]
    assert len(gpu) == len(cpu)
    with pytest.raises(SystemExit, match="ONNXRUNTIME_GPU_VERSION"):
        serve_requirements(pyproject, "gpu", {})


@pytest.mark.slow
def test_bundle_init_really_trains_and_exports_a_bundle_the_server_can_load(tiny_encoder_dir, tmp_path):
    """The real `protolm train` and `protolm export` through the script, on a tiny model."""
    files = write_tiny_csvs(tmp_path, train_rows=40, validation_rows=20)
    bundle = tmp_path / "bundles" / "default"
    args = ["--train-file", str(files["train"]), "--validation-file", str(files["validation"]), "--encoder", str(tiny_encoder_dir),
            "--num-prototypes", "4", "--max-length", "32", "--epochs", "1", "--batch-size", "16", "--faithfulness", "false"]
    env = {"PROTOLM_BUNDLE_DIR": str(bundle), "PROTOLM_PROGRESS": "false", "PROTOLM_VARIANTS": "int8"}
    path = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    result = run_init(tmp_path, *args, path=path, **env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"{bundle} is ready" in result.stdout
    from core.bundle import read_manifest

    assert read_manifest(bundle).labels == ("negative", "positive")
    again = run_init(tmp_path, *args, path=path, **env)
    assert again.returncode == 0 and "nothing to do" in again.stdout
