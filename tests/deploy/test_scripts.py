"""The scripts the images run: deploy/bundle-init.sh (the training image's entrypoint) and
deploy/serve_requirements.py (what deploy/install-serve.sh installs for each serving image)."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import write_tiny_csvs
from tests.deploy.deploy_helpers import DEPLOY, REPO, load_deploy_module, parse_dockerfile, run_script, serving_build

serve_requirements_module = load_deploy_module("serve_requirements")
serve_requirements = serve_requirements_module.serve_requirements

BUNDLE_INIT = DEPLOY / "bundle-init.sh"
VENV_BIN = Path(sys.executable).parent
DEFAULT_TASK = "sst2"  # what bundle-init trains when given no arguments (its usage line; the demo's model)


def run_init(tmp_path: Path, *args: str, path: str, **env) -> subprocess.CompletedProcess:
    environ = {"PATH": path, "HOME": str(tmp_path), "TMPDIR": str(tmp_path), **env}
    return subprocess.run(["sh", str(BUNDLE_INIT), *args], capture_output=True, text=True, env=environ, timeout=600)


def run_init_with_fake_protolm(tmp_path: Path, *args: str, **env):
    """bundle-init.sh with a fake `protolm` (deploy_helpers.FAKE_PROTOLM); its calls come back as
    the real command line parses them, in the environment they got."""
    result, calls = run_script(BUNDLE_INIT, list(args), env, tmp_path / "run")
    for call in calls:
        assert call.returncode == 0, f"bundle-init runs `protolm {' '.join(call.argv)}`, which protolm rejects: {call.stderr}"
    return result, calls


def existing_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundles" / "default"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    return bundle


def test_bundle_init_does_nothing_when_a_bundle_is_there(tmp_path):
    bundle = existing_bundle(tmp_path)
    result, calls = run_init_with_fake_protolm(tmp_path, PROTOLM_BUNDLE_DIR=str(bundle))
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert calls == [], [c.argv for c in calls]


def test_bundle_init_trains_exports_and_verifies_when_there_is_none(tmp_path):
    bundle = tmp_path / "bundles" / "default"
    result, calls = run_init_with_fake_protolm(tmp_path, PROTOLM_BUNDLE_DIR=str(bundle))
    assert result.returncode == 0, result.stderr
    assert [(c.args.command, getattr(c.args, "bundle_command", None)) for c in calls] == [("train", None), ("export", None), ("bundle", "verify")]
    train, export, verify = (c.args for c in calls)
    assert train.task == DEFAULT_TASK  # the default arguments
    # the trained model is what is exported, into the bundle directory, and then verified there
    assert Path(export.model_dir) == Path(train.output_dir)
    assert Path(export.bundle_dir) == bundle and Path(verify.bundle_dir) == bundle
    assert export.overwrite is False  # never replace what is there unasked
    assert not Path(train.output_dir).exists()  # the model directory was temporary
    assert (bundle / "manifest.json").is_file()


def test_bundle_init_passes_its_arguments_to_train_and_force_replaces(tmp_path):
    bundle = existing_bundle(tmp_path)
    result, calls = run_init_with_fake_protolm(tmp_path, "--task", "sst5", "--epochs", "1", PROTOLM_BUNDLE_DIR=str(bundle), PROTOLM_INIT_FORCE="1")
    assert result.returncode == 0, result.stderr
    train, export, _ = (c.args for c in calls)
    assert (train.command, train.task, train.epochs) == ("train", "sst5", 1.0)
    assert export.command == "export" and Path(export.bundle_dir) == bundle and export.overwrite is True


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
    scripts = [BUNDLE_INIT, DEPLOY / "install-serve.sh", DEPLOY / "with-build-settings.sh"]
    result = subprocess.run([shellcheck, "--shell=sh", *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def requirements(lines) -> dict[str, Requirement]:
    parsed = [Requirement(line) for line in lines]
    by_name = {canonicalize_name(r.name): r for r in parsed}
    assert len(by_name) == len(parsed), lines  # one build of each package, never two side by side
    return by_name


def test_serving_requirements_swap_in_the_gpu_builds():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    cpu = serve_requirements(pyproject, "cpu", {})
    extras = pyproject["project"]["optional-dependencies"]
    assert cpu == pyproject["project"]["dependencies"] + extras["serve"] + extras["tracing"]
    # the GPU image's install, with the versions deploy/Dockerfile gives the stage that builds it
    dockerfile = parse_dockerfile()
    (stage,) = [name for name in ("serve", "serve-gpu") if serving_build(dockerfile, name).flavour == "gpu"]
    versions = dockerfile.build_args(serving_build(dockerfile, stage).builder)
    gpu, cpu_ = requirements(serve_requirements(pyproject, "gpu", versions)), requirements(cpu)
    gpu_extra = requirements(pyproject["project"]["optional-dependencies"]["gpu"])
    swapped = {canonicalize_name(cpu_name): (canonicalize_name(gpu_name), variable)
               for cpu_name, (gpu_name, variable) in serve_requirements_module.CPU_TO_GPU.items()}
    assert set(swapped) == {"onnxruntime", "faiss-cpu"}  # the CPU-only builds the serve extra has
    for cpu_name, (gpu_name, variable) in swapped.items():
        # the CPU build is gone; the GPU build is there at exactly the image's version
        assert cpu_name in cpu_ and cpu_name not in gpu
        assert str(gpu[gpu_name].specifier) == f"=={versions[variable]}", gpu[gpu_name]
        # within the range pyproject's gpu extra allows
        if gpu_name in gpu_extra:
            assert gpu_extra[gpu_name].specifier.contains(versions[variable], prereleases=True), f"{gpu[gpu_name]} vs {gpu_extra[gpu_name]}"
    assert "onnxruntime-gpu" in {gpu_name for gpu_name, _ in swapped.values()}  # the CUDA execution provider
    # a CUDA build is for the CUDA of the image's base (faiss-gpu-cu12 needs CUDA 12)
    cuda_major = dockerfile.base_image(stage).partition(":")[2].split(".")[0]
    for gpu_name, _ in swapped.values():
        for major in re.findall(r"-cu(\d+)$", gpu_name):
            assert major == cuda_major, f"{gpu_name} on CUDA {cuda_major}"
    # nothing else changes
    assert {n: str(r) for n, r in gpu.items() if n not in {g for g, _ in swapped.values()}} == {n: str(r) for n, r in cpu_.items() if n not in swapped}
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
