"""Readers for the deployment files (Dockerfile stages, YAML, PromQL) shared by tests/deploy, and
runners that run what the images run (their commands, health checks, scripts) outside a container
and hand the `protolm` calls they make to the real command line."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable
from unittest import mock

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_OVERRIDE = DEPLOY / "docker-compose.gpu.yml"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "protolm.json"
PYPROJECT = REPO / "pyproject.toml"
# PATH of the python:*-slim (and most Debian/Ubuntu) base images, which deploy/Dockerfile extends.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- Dockerfile ---------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """The stage's own ENV settings, in order (``KEY=value`` form only)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.arguments):
                key, sep, value = token.partition("=")
                assert sep, f"line {instruction.line}: use ENV KEY=value, not {token!r}"
                values[key] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        instruction = self.last(keyword)
        if instruction is None:
            return []
        value = json.loads(instruction.arguments)
        assert isinstance(value, list), f"line {instruction.line}: {keyword} must use the exec (JSON) form"
        return value

    def copies(self) -> list[Copy]:
        return [parse_copy(i) for i in self.all("COPY")]


@dataclass
class Copy:
    """A COPY instruction: its --flags, its sources and its destination."""

    flags: dict[str, str]
    sources: list[str]
    dest: str
    line: int

    def target_of(self, source: str) -> str:
        """Where ``source`` lands in the image (a destination ending in / is a directory)."""
        if self.dest.endswith("/") or len(self.sources) > 1:
            return str(PurePosixPath(self.dest) / PurePosixPath(source).name)
        return self.dest


def parse_copy(instruction: Instruction) -> Copy:
    words = shlex.split(instruction.arguments)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    if len(words) == 1 and words[0].startswith("["):
        words = json.loads(words[0])
    assert len(words) >= 2, f"line {instruction.line}: COPY needs a source and a destination"
    return Copy(flags, words[:-1], words[-1], instruction.line)


VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def substitute(text: str, values: dict[str, str]) -> str:
    """Docker's (and the shell's) variable substitution: $NAME, ${NAME}, ${NAME:-default}; unset is empty."""
    def replace(match):
        name = match.group("braced") or match.group("plain")
        return values.get(name) or match.group("default") or ""
    return VARIABLE.sub(replace, text)


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script line (split at &&, ||, ;, |), each as its words, without
    leading VAR=value assignments."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for words in commands:
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def stage(self, name: str) -> Stage:
        return self.stages[name]

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages of this file it is built FROM, the first one first."""
        stages = [self.stage(name)]
        while stages[0].base in self.stages:
            stages.insert(0, self.stage(stages[0].base))
        return stages

    def base_image(self, name: str) -> str:
        """The image (outside this file) a stage is built on, with the global build arguments' defaults."""
        return substitute(self.chain(name)[0].base, self.global_args)

    def build_args(self, name: str) -> dict[str, str]:
        """The build arguments a stage sees: those it declares with ARG (a global one's default
        when it gives none). A global ARG not re-declared in the stage is empty there."""
        values = {}
        for instruction in self.stage(name).all("ARG"):
            key, sep, default = instruction.arguments.partition("=")
            values[key] = default if sep else self.global_args.get(key, "")
        return values

    def resolve(self, name: str, text: str) -> str:
        """``text`` of an instruction of stage ``name`` with its build arguments and ENV substituted."""
        return substitute(text, {**self.build_args(name), **self.environment(name)})

    def environment(self, name: str, base: dict[str, str] | None = None) -> dict[str, str]:
        """What a container of the stage starts with: the base image's environment (a Debian
        PATH unless given), then every ENV of the stage and the stages it is built FROM, with
        $VAR references expanded as Docker expands them."""
        env = dict(base) if base is not None else {"PATH": BASE_IMAGE_PATH}
        for stage in self.chain(name):
            for instruction in stage.all("ENV"):
                before = dict(env)  # an ENV line's references see the values from before it
                for token in shlex.split(instruction.arguments):
                    key, sep, value = token.partition("=")
                    assert sep, f"line {instruction.line}: use ENV KEY=value, not {token!r}"
                    env[key] = substitute(value, before)
        return env

    def user(self, name: str) -> str | None:
        instruction = self.stage(name).last("USER")
        return None if instruction is None else self.resolve(name, instruction.arguments)


def _logical_lines(text: str):
    """(line number, instruction text) with comments dropped and backslash continuations joined."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for number, line in _logical_lines(path.read_text()):
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"line {number}: every stage is named (FROM image AS name)"
            current = Stage(name=words[2], base=words[0])
            stages[current.name] = current
            continue
        if current is None:
            assert keyword == "ARG", f"line {number}: only ARG may come before the first FROM"
            name, _, default = arguments.partition("=")
            global_args[name] = default
            continue
        current.instructions.append(Instruction(keyword, arguments, number))
    return Dockerfile(global_args, stages)


@dataclass
class HealthCheck:
    """A health check as Docker runs it: ``command`` (None: disabled) and its timings in seconds."""

    command: list[str] | None
    interval: float = 30.0
    timeout: float = 30.0
    start_period: float = 0.0
    retries: int = 3


DOCKER_HEALTHCHECK_OPTIONS = {"interval", "timeout", "start-period", "start-interval", "retries"}


def healthcheck(stage: Stage) -> HealthCheck | None:
    """A stage's HEALTHCHECK (None when it has none): ``NONE``, or ``[--options] CMD`` in the exec
    form or the shell form (run with /bin/sh -c), with Docker's defaults for missing options."""
    instruction = stage.last("HEALTHCHECK")
    if instruction is None:
        return None
    if instruction.arguments.strip().upper() == "NONE":
        return HealthCheck(command=None)
    match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.+)", instruction.arguments.strip(), re.DOTALL)
    assert match, f"line {instruction.line}: expected HEALTHCHECK [--options] CMD command"
    options = dict(option[2:].split("=", 1) for option in match.group(1).split())
    assert set(options) <= DOCKER_HEALTHCHECK_OPTIONS, f"line {instruction.line}: unknown options {sorted(set(options) - DOCKER_HEALTHCHECK_OPTIONS)}"
    command = match.group(2).strip()
    argv = json.loads(command) if command.startswith("[") else ["/bin/sh", "-c", command]
    check = HealthCheck(command=argv, retries=int(options.get("retries", 3)))
    for key in ("interval", "timeout", "start-period"):
        if key in options:
            setattr(check, key.replace("-", "_"), duration_seconds(options[key]))
    return check


def healthcheck_command(stage: Stage) -> list[str]:
    """The command of the stage's HEALTHCHECK, as Docker runs it."""
    check = healthcheck(stage)
    assert check is not None and check.command, f"stage {stage.name} has no HEALTHCHECK command"
    return check.command


def duration_seconds(text: str | float) -> float:
    """A Go/Docker/Compose duration (``1m30s``, ``10s``, ``500ms``; a bare number is seconds)."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# --- what the images run, run outside a container -----------------------------------------


def load_deploy_module(name: str):
    """A Python file of deploy/ (not a package) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def console_scripts() -> dict[str, str]:
    """The commands ``pip install`` of the project puts in a virtualenv's bin directory."""
    return tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


def install_command(stage: Stage, script: str) -> tuple[list[str], Instruction] | None:
    """The words of the first command of the stage's RUN instructions that runs ``script``
    (``sh /src/deploy/install-serve.sh ...``, say): from the script on, with its arguments."""
    for instruction in stage.all("RUN"):
        for words in shell_commands(instruction.arguments):
            for i, word in enumerate(words):
                if PurePosixPath(word).name == script:
                    return words[i:], instruction
    return None


def accounts(dockerfile: Dockerfile, name: str) -> dict[str, str]:
    """user name -> uid of the accounts the stage's RUN instructions create with useradd --uid."""
    found = {}
    for instruction in dockerfile.stage(name).all("RUN"):
        for words in shell_commands(instruction.arguments):
            if PurePosixPath(words[0]).name == "useradd" and "--uid" in words:
                found[words[-1]] = dockerfile.resolve(name, words[words.index("--uid") + 1])
    return found


def prepared_directories(dockerfile: Dockerfile, name: str) -> dict[str, str | None]:
    """directory -> owner (None: left to root) of the directories the stage's RUN instructions
    create with mkdir, with the owner a later chown gives them."""
    made: dict[str, str | None] = {}
    for instruction in dockerfile.stage(name).all("RUN"):
        for words in shell_commands(instruction.arguments):
            program, args = PurePosixPath(words[0]).name, [w for w in words[1:] if not w.startswith("-")]
            if program == "mkdir":
                made.update((dockerfile.resolve(name, a).rstrip("/"), None) for a in args)
            elif program == "chown" and args:
                owner = dockerfile.resolve(name, args[0]).split(":")[0]
                made.update((dockerfile.resolve(name, a).rstrip("/"), owner) for a in args[1:] if dockerfile.resolve(name, a).rstrip("/") in made)
    return made


@dataclass
class ServingBuild:
    """How a serving stage gets its software: the virtualenv a build stage makes with
    deploy/install-serve.sh VENV PROJECT FLAVOUR and the COPY that brings it over."""

    builder: str
    venv: str
    flavour: str
    copy: Copy


def serving_build(dockerfile: Dockerfile, name: str) -> ServingBuild:
    builds = [(copy, install_command(dockerfile.stage(copy.flags["from"]), "install-serve.sh"))
              for copy in dockerfile.stage(name).copies() if copy.flags.get("from") in dockerfile.stages]
    builds = [(copy, found) for copy, found in builds if found]
    assert builds, f"stage {name} copies nothing from a stage that runs deploy/install-serve.sh"
    copy, (words, instruction) = builds[-1]
    builder = copy.flags["from"]
    args = [dockerfile.resolve(builder, w) for w in words[1:]]
    assert len(args) in (2, 3), f"line {instruction.line}: install-serve.sh VENV PROJECT [cpu|gpu]"
    return ServingBuild(builder=builder, venv=args[0].rstrip("/"), flavour=args[2] if len(args) == 3 else "cpu", copy=copy)


FAKE_PROTOLM = """#!{python} -I
# A stand-in for the `protolm` console script: records its arguments and environment (the tests
# replay them through the real command line with invoke_cli), fakes the effects that
# deploy/bundle-init.sh relies on, and exits with $FAKE_PROTOLM_EXIT (0 by default).
import argparse, json, os, sys
from pathlib import Path

argv = sys.argv[1:]
with open({log!r}, "a") as out:
    out.write(json.dumps({{"argv": argv, "environ": dict(os.environ)}}) + "\\n")
parser = argparse.ArgumentParser(add_help=False)
if argv[:1] == ["train"]:
    parser.add_argument("--output-dir")
    known, _ = parser.parse_known_args(argv[1:])
    if known.output_dir:
        Path(known.output_dir).mkdir(parents=True, exist_ok=True)
elif argv[:1] == ["export"]:
    parser.add_argument("model_dir")
    parser.add_argument("bundle_dir")
    parser.add_argument("--overwrite", nargs="?", const="true", default=os.environ.get("PROTOLM_OVERWRITE", "false"))
    known, _ = parser.parse_known_args(argv[1:])
    bundle = Path(known.bundle_dir)
    if bundle.is_dir() and any(bundle.iterdir()) and known.overwrite.lower() not in ("1", "true", "yes", "on"):
        sys.exit(f"protolm export: error: {{bundle}} exists and is not empty; pass --overwrite to replace it")
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "manifest.json").write_text("{{}}")
elif argv[:2] == ["bundle", "verify"] and not (Path(argv[2]) / "manifest.json").is_file():
    sys.exit(f"protolm bundle verify: error: no bundle at {{argv[2]}}")
sys.exit(int(os.environ.get("FAKE_PROTOLM_EXIT", "0")))
"""


def fake_protolm(path: Path) -> Path:
    """Writes a fake `protolm` executable at ``path``; returns the log its calls go to (read_calls)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.parent / f".{path.name}-calls.jsonl"
    path.write_text(FAKE_PROTOLM.format(python=sys.executable, log=str(log)))
    path.chmod(0o755)
    return log


@dataclass
class Call:
    """One run of the fake `protolm`: the arguments and the environment it got."""

    argv: list[str]
    environ: dict[str, str]


def read_calls(log: Path) -> list[Call]:
    if not log.exists():
        return []
    return [Call(**json.loads(line)) for line in log.read_text().splitlines()]


FAKE = Path("<fake protolm>")


@dataclass
class ImageRun:
    result: subprocess.CompletedProcess
    calls: list[Call]


def run_in_image(argv: list[str], environ: dict[str, str], root: Path, programs: dict[str, Path] | None = None,
                 timeout: float = 60) -> ImageRun:
    """Runs a container's command outside a container. A new directory under ``root`` stands in
    for the image's file system: it holds /bin/sh (which the base images have) and the given ``programs`` (path in
    the image -> a file to copy there, or FAKE for a fake `protolm` whose calls come back in
    ``calls``); the container's PATH is rewritten to point into it, so a program runs only when
    the container would find it there."""
    root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="image-root-", dir=root))  # a fresh one for every run
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "sh").symlink_to(shutil.which("sh"))
    logs = []
    for image_path, source in (programs or {}).items():
        target = root / image_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source == FAKE:
            logs.append(fake_protolm(target))
        else:
            shutil.copy2(source, target)
    env = dict(environ)
    env["PATH"] = ":".join(str(root / entry.lstrip("/")) for entry in environ.get("PATH", "").split(":") if entry)
    executable = argv[0] if "/" not in argv[0] else str(root / argv[0].lstrip("/"))
    try:
        result = subprocess.run([executable, *argv[1:]], check=False, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as error:
        raise AssertionError(f"{argv[0]!r} is not on the container's PATH {environ.get('PATH')!r}: {error}") from None
    calls = [call for log in logs for call in read_calls(log)]
    for call in calls:  # the environment as the container has it
        call.environ["PATH"] = environ.get("PATH", "")
    return ImageRun(result, calls)


def serving_image_programs(dockerfile: Dockerfile, name: str) -> dict[str, Path]:
    """The programs of a serving stage that matter here: every console script of the project in
    the bin directory of the virtualenv the stage copies in (as fakes)."""
    build = serving_build(dockerfile, name)
    return {f"{build.copy.dest.rstrip('/')}/bin/{script}": FAKE for script in console_scripts()}


# --- the real command line, in process --------------------------------------------------------


@dataclass
class Invocation:
    """What the real `protolm` command line makes of an argv in an environment: the parsed
    arguments, and for the commands that would start a server or call one, the ServerConfig
    `serve` starts with, the client it opens (target, token, tls_ca, timeout) and its exit status."""

    argv: list[str]
    returncode: int | None = None
    args: argparse.Namespace | None = None
    server_config: object | None = None
    client: dict | None = None
    health_service: str | None = None
    stderr: str = ""


def invoke_cli(argv: list[str], environ: dict[str, str], health_status: str = "SERVING") -> Invocation:
    """Runs ``cli.main.main(argv)`` with os.environ replaced by ``environ``. Commands that would do
    real work (train, export, ...) are only parsed, except ``serve`` (the server's start is
    replaced by a recorder of its config) and ``health`` (the gRPC client is replaced by a
    recorder whose health check answers ``health_status``)."""
    import service.client
    import service.server
    from cli import main as cli_main

    record = Invocation(argv=list(argv))
    real_client = service.client.ProtoLMClient

    async def serve(config):
        record.server_config = config

    class RecordingClient:
        def __init__(self, *args, **kwargs):
            bound = inspect.signature(real_client).bind(*args, **kwargs)
            bound.apply_defaults()
            record.client = dict(bound.arguments)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def health(self, service=""):
            record.health_service = service
            return health_status

    stderr, stdout = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, environ, clear=True), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            record.args = cli_main.build_parser().parse_args(argv)
            if record.args.command in ("serve", "health"):
                with mock.patch.object(service.server, "serve", serve), mock.patch.object(service.client, "ProtoLMClient", RecordingClient):
                    record.returncode = cli_main.main(argv)
            else:
                record.returncode = 0
        except SystemExit as exit_:
            record.returncode = exit_.code if isinstance(exit_.code, int) else 2
    record.stderr = stderr.getvalue()
    return record


# --- the images' commands, through the real command line ---------------------------------------

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
WILDCARD = {"0.0.0.0", "::", "[::]", ""}


def split_address(target: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) of a gRPC target, without a dns:/// or ipv4: scheme."""
    target = re.sub(r"^(dns:(//[^/]*)?/|ipv4:|ipv6:)", "", target)
    host, _, port = target.rpartition(":")
    assert host and port.isdigit(), f"{target!r} is not HOST:PORT"
    return host, int(port)


def run_cli_in_image(argv: list[str], environ: dict[str, str], root: Path, programs: dict[str, Path],
                     health_status: str = "SERVING") -> tuple[ImageRun, list[Invocation]]:
    """Runs a container's command (run_in_image) and replays each `protolm` call it made through
    the real command line (invoke_cli), with the arguments and environment the call got."""
    run = run_in_image(argv, environ, root, programs)
    return run, [invoke_cli(call.argv, call.environ, health_status) for call in run.calls]


def served_config(argv: list[str], environ: dict[str, str], root: Path, programs: dict[str, Path]):
    """The ServerConfig a container whose command is ``argv`` serves with."""
    run, invocations = run_cli_in_image(argv, environ, root, programs)
    assert run.result.returncode == 0, run.result.stderr
    (invocation,) = invocations
    assert invocation.returncode == 0 and invocation.args.command == "serve", (invocation.argv, invocation.stderr)
    assert invocation.server_config is not None, f"{argv} does not start the server"
    return invocation.server_config


@dataclass
class HealthCheckRun:
    invocation: Invocation  # what `protolm health` makes of the check's arguments, in the container's environment
    exit_serving: int  # the check's exit status when the server reports SERVING
    exit_not_serving: int  # ... and when it reports NOT_SERVING


def run_health_check(argv: list[str], environ: dict[str, str], root: Path, programs: dict[str, Path]) -> HealthCheckRun:
    """Runs a health check command as Docker would (a fake `protolm` records the call), then its
    `protolm` call through the real CLI for a SERVING and a NOT_SERVING server, and the command
    again with `protolm` exiting as the CLI did, so the check's own exit status is what Docker sees."""
    run, (serving,) = run_cli_in_image(argv, environ, root, programs, "SERVING")
    not_serving = invoke_cli(run.calls[0].argv, run.calls[0].environ, "NOT_SERVING")
    statuses = {}
    for name, invocation in (("serving", serving), ("not-serving", not_serving)):
        rerun = run_in_image(argv, {**environ, "FAKE_PROTOLM_EXIT": str(invocation.returncode)}, root, programs)
        statuses[name] = rerun.result.returncode
    return HealthCheckRun(serving, statuses["serving"], statuses["not-serving"])


def program_source(dockerfile: Dockerfile, name: str, program: str) -> Path | None:
    """The build-context file that ``program`` is in a container of the stage: looked up on the
    stage's PATH (or at its absolute path) among the files the stage's COPY instructions bring
    in from the context; None when it is not one of those."""
    path = dockerfile.environment(name)["PATH"]
    candidates = [program] if program.startswith("/") else [f"{d.rstrip('/')}/{program}" for d in path.split(":") if d]
    copied = {}
    for stage in dockerfile.chain(name):
        for copy in stage.copies():
            if "from" not in copy.flags:
                copied.update((copy.target_of(source), REPO / source) for source in copy.sources)
    return next((copied[c] for c in candidates if c in copied), None)


def run_script(script: Path, args: list[str], environ: dict[str, str], workdir: Path, extra_path: str = "/usr/bin:/bin",
               timeout: float = 600) -> tuple[subprocess.CompletedProcess, list[Invocation]]:
    """Runs a script the way an image runs it (executed, so its #! line counts) with a fake
    `protolm` first on the PATH; returns its result and every `protolm` call it made, replayed
    through the real command line."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = fake_protolm(workdir / "bin" / "protolm")
    env = {"HOME": str(workdir), "TMPDIR": str(workdir), **environ, "PATH": f"{workdir / 'bin'}:{extra_path}"}
    result = subprocess.run([str(script), *args], check=False, capture_output=True, text=True, env=env, timeout=timeout)
    calls = read_calls(log)
    for call in calls:
        call.environ = {k: v for k, v in call.environ.items() if k != "PATH"}
    return result, [invoke_cli(call.argv, call.environ) for call in calls]


# --- Compose ------------------------------------------------------------------------------------

COMPOSE_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\})")


def interpolate(value, environ: dict[str, str]):
    """Compose's variable interpolation: ${NAME}, ${NAME:-default}, ${NAME-default}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if isinstance(value, str):
        def replace(match):
            if match.group(0) == "$$":
                return "$"
            return environ.get(match.group("name")) or match.group("default") or ""
        return COMPOSE_VARIABLE.sub(replace, value)
    return value


def merge(base, override):
    """Compose's merge of an override file for mappings (the override here has only mappings)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return override


def built_images() -> dict[str, str]:
    """image reference -> deploy/Dockerfile stage, for the images docker-compose.yml (alone and
    with the GPU override) builds, with the default tag."""
    compose = interpolate(load_yaml(COMPOSE_FILE), {})
    merged = merge(compose, interpolate(load_yaml(GPU_OVERRIDE), {}))
    images = {}
    for services in (compose["services"], merged["services"]):
        for service in services.values():
            build = service.get("build")
            if build and (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve():
                images[service["image"]] = build["target"]
    return images


# --- YAML and waiting -----------------------------------------------------------------------


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], object], seconds: float, what: str, interval: float = 0.25):
    """Polls ``check`` until it returns something truthy; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the thing we wait for may not answer yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what} (last error: {last_error!r})")


# --- PromQL ---------------------------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf", "nan",
    # aggregation operators (the parser treats them like functions)
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$instance": ".*", "$method": ".*"}


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced as Grafana would (all selected)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords,
    label names in matchers or grouping clauses, or strings."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name, rest = match.group(0), text[match.end():].lstrip()
        if rest.startswith("("):  # a function or an aggregation
            continue
        if name.lower() in PROMQL_KEYWORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        start = match.start()
        if start > 0 and (text[start - 1].isdigit() or text[start - 1] == "."):
            continue  # part of a number such as 1e3
        names.add(name)
    return names


def dashboard_expressions(dashboard: dict) -> list[str]:
    """Every PromQL expression of a Grafana dashboard: panel targets (rows included) and the
    series its query variables read (``label_values(series, label)``)."""
    exprs = []

    def panels(items):
        for panel in items:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    exprs.append(target["expr"])
            panels(panel.get("panels", []))

    panels(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and query:
            exprs.append(variable_query_to_promql(query))
    return exprs


def variable_query_to_promql(query: str) -> str:
    """``label_values(metric, label)`` (Grafana's variable query) as the series it reads."""
    match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
    return match.group(1) if match else query


def exported_series_names(families) -> set[str]:
    """Series names a scrape can carry, from the families of prometheus_client's parser: a
    counter ``x`` is exposed as ``x_total`` (and ``x_created``), a histogram as ``x_bucket``,
    ``x_sum``, ``x_count`` (and ``x_created``)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("_sum", "_count", "_created")}
    names = set()
    for family in families:
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names

