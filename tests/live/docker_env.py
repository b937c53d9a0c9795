"""A Docker engine, local base images and a host-network compose file for the deploy test.

These machines reach no container registry: the engine is Debian's `docker.io`, started with
no bridge and no iptables (every container on the host network, traffic on 127.0.0.1 only),
the base images are built locally (debootstrap + `docker import`, then Debian's Python and
Prometheus on top), and pip inside a build gets the machine's own CA certificates and pip
settings through the Dockerfile's build secrets, its local package folders served on a
loopback port.
"""

from __future__ import annotations

import configparser
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DAEMON_JSON = {"bridge": "none", "iptables": False, "ip6tables": False}
PACKAGES = {"dockerd": "docker.io", "docker-compose": "docker-compose", "debootstrap": "debootstrap"}
DEBIAN_IMAGE = "protolm-ci/debian:bookworm"
PYTHON_IMAGE = "protolm-ci/python:3.11-bookworm"
PROMETHEUS_IMAGE = "protolm-ci/prometheus:bookworm"
SERVE_IMAGE, TRAIN_IMAGE = "protolm-serve:ci", "protolm-train:ci"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class EngineUnavailable(Exception):
    """No Docker engine can be started here; the message says why, in one line."""


def run(*args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}... exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def docker_cli() -> str:
    # Debian's client matches Debian's engine; another client on PATH may be newer.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker") or "docker"


def _engine_answers() -> bool:
    return subprocess.run([docker_cli(), "info"], capture_output=True, timeout=30).returncode == 0


def start_engine() -> None:
    """Install (as root, through apt) and start the engine unless one already answers."""
    if shutil.which("docker") and _engine_answers() and shutil.which("docker-compose"):
        return
    missing = [package for command, package in PACKAGES.items() if not shutil.which(command) and not Path(f"/usr/sbin/{command}").exists()]
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise EngineUnavailable(f"{', '.join(missing)} missing and cannot be installed here (needs root and apt-get)")
        run("apt-get", "update", "-qq", timeout=600)
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if _engine_answers():
        return
    daemon_json = Path("/etc/docker/daemon.json")
    if not daemon_json.exists():
        daemon_json.parent.mkdir(parents=True, exist_ok=True)
        daemon_json.write_text(json.dumps(DAEMON_JSON) + "\n")
    log = open(tempfile.gettempdir() + "/protolm-dockerd.log", "ab")
    subprocess.Popen(["/usr/sbin/dockerd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _engine_answers():
        if time.monotonic() > deadline:
            raise EngineUnavailable(f"dockerd did not answer within 60 s (log: {log.name})")
        time.sleep(0.5)


def image_exists(name: str) -> bool:
    return subprocess.run([docker_cli(), "image", "inspect", name], capture_output=True).returncode == 0


def image_size_mb(name: str) -> float:
    return int(run(docker_cli(), "image", "inspect", "-f", "{{.Size}}", name).stdout) / 1e6


def build(dockerfile: Path, context: Path, tag: str, *args: str, timeout: float = 1200) -> None:
    run(docker_cli(), "build", "--network", "host", "-f", str(dockerfile), "-t", tag, *args, str(context),
        timeout=timeout, env={**os.environ, "DOCKER_BUILDKIT": "1"})


def base_images() -> None:
    """Debian bookworm from debootstrap, and Debian's Python and Prometheus on it; kept
    between runs (the layer cache of the machine)."""
    if not image_exists(DEBIAN_IMAGE):
        with tempfile.TemporaryDirectory() as root:
            run("debootstrap", "--variant=minbase", "--include=ca-certificates", "bookworm", root, DEBIAN_MIRROR, timeout=900)
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            run(docker_cli(), "import", "-", DEBIAN_IMAGE, stdin=tar.stdout)
            tar.wait()
    if not image_exists(PYTHON_IMAGE):
        build(HERE / "python-base.Dockerfile", HERE, PYTHON_IMAGE, "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}")
    if not image_exists(PROMETHEUS_IMAGE):
        build(HERE / "prometheus.Dockerfile", HERE, PROMETHEUS_IMAGE, "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class LocalPackageServer:
    """The machine's local pip folders (find-links, file:// indexes) served on a loopback port,
    and a pip.conf that points a build at them; PyPI itself stays the default index."""

    def __init__(self, directory: Path):
        self.directory = directory
        values = self._machine_pip_settings()
        links = list(dict.fromkeys(v for v in values.get("find-links", "").split() if Path(v).is_dir()))
        indexes = [v.removeprefix("file://") for v in values.get("extra-index-url", "").split() if v.startswith("file://")]
        self.shared: dict[str, str] = {}
        for number, path in enumerate(links + [str(Path(p).parent) for p in indexes if Path(p).is_dir()]):
            (directory / str(number)).symlink_to(path)
            self.shared[path] = str(number)
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{self.server.server_port}"
        config = configparser.ConfigParser()
        config["global"] = {"trusted-host": "127.0.0.1"}
        if links:
            config["global"]["find-links"] = " ".join(f"{url}/{self.shared[p]}/" for p in links)
        served_indexes = [f"{url}/{self.shared[str(Path(p).parent)]}/{Path(p).name}/" for p in indexes if Path(p).is_dir()]
        if served_indexes:
            config["global"]["extra-index-url"] = " ".join(served_indexes)
        self.pip_conf = directory / "pip.conf"
        with open(self.pip_conf, "w") as handle:
            config.write(handle)

    @staticmethod
    def _machine_pip_settings() -> dict[str, str]:
        values = {}
        for line in run("python3", "-m", "pip", "config", "list", check=False).stdout.splitlines():
            key, _, value = line.partition("=")
            name = key.split(".", 1)[-1]
            if name in ("find-links", "extra-index-url"):
                values[name] = (values.get(name, "") + " " + value.strip("'\"")).strip()
        if os.environ.get("PIP_FIND_LINKS"):
            values["find-links"] = (values.get("find-links", "") + " " + os.environ["PIP_FIND_LINKS"]).strip()
        return values

    def secrets(self) -> list[str]:
        args = ["--secret", f"id=pip-conf,src={self.pip_conf}"]
        if CA_BUNDLE.is_file():
            args += ["--secret", f"id=ca-certificates,src={CA_BUNDLE}"]
        return args

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def protolm_images(package_server: LocalPackageServer) -> None:
    for target, tag in (("serve", SERVE_IMAGE), ("train", TRAIN_IMAGE)):
        build(REPO / "deploy" / "Dockerfile", REPO, tag, "--target", target, "--build-arg", f"PYTHON_IMAGE={PYTHON_IMAGE}",
              *package_server.secrets())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
