"""docker-compose.yml and the GPU override against the Compose Specification's JSON schema,
and against the image, the server's options and the Prometheus and Grafana files they mount."""

import dataclasses
import hashlib
import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import jsonschema
import pytest

from core.options import env_name
from protolm.data import TASKS
from service.config import ServerConfig
from service.server import API_SERVICE, OVERALL
from tests.deploy.deploy_helpers import (
    COMPOSE_FILE,
    DASHBOARD,
    DEPLOY,
    DOCKERFILE,
    GPU_OVERRIDE,
    LOOPBACK,
    REPO,
    duration_seconds,
    healthcheck,
    interpolate,
    invoke_cli,
    load_yaml,
    merge,
    parse_dockerfile,
    program_source,
    run_health_check,
    run_script,
    served_config,
    serving_build,
    serving_image_programs,
    split_address,
)

SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
BUNDLE_INIT = DEPLOY / "bundle-init.sh"
DEFAULT_HEALTHCHECK_TIMEOUT = 30.0  # Compose's and Docker's
@pytest.fixture(scope="module")
def validator():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256, "tests/data/compose-spec.json changed; see compose-spec.README.md"
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def compose():
    return interpolate(load_yaml(COMPOSE_FILE), {})


@pytest.fixture(scope="module")
def gpu_override():
    return interpolate(load_yaml(GPU_OVERRIDE), {})


@pytest.fixture(scope="module")
def image():
    return parse_dockerfile()


def errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# --- what Compose makes of a service ----------------------------------------------------------


def is_serving_stage(image, name: str) -> bool:
    try:
        serving_build(image, name)
    except AssertionError:
        return False
    return True


@pytest.fixture(scope="module")
def server_name(compose, image) -> str:
    """The service that runs a serving image."""
    (name,) = [n for n, s in compose["services"].items() if "build" in s and is_serving_stage(image, s["build"]["target"])]
    return name


def service_environment(service) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(entry.split("=", 1) for entry in environment)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in environment.items()}


def container_environment(image, service) -> dict[str, str]:
    """What the service's container starts with: its image's environment, then the service's."""
    return {**image.environment(service["build"]["target"]), **service_environment(service)}


def container_command(image, service) -> list[str]:
    """ENTRYPOINT + CMD as Compose runs them: `entrypoint` replaces the image's (and drops its
    CMD), `command` replaces the CMD."""
    stage = image.stage(service["build"]["target"])
    entrypoint = service.get("entrypoint", stage.exec_form("ENTRYPOINT"))
    default_command = [] if "entrypoint" in service else stage.exec_form("CMD")
    return [*entrypoint, *service.get("command", default_command)]


def server_config(image, service, root: Path) -> ServerConfig:
    """The ServerConfig the service's server starts with."""
    programs = serving_image_programs(image, service["build"]["target"])
    return served_config(container_command(image, service), container_environment(image, service), root, programs)


def healthcheck_argv(test) -> list[str]:
    """A Compose healthcheck `test` as the command Docker runs."""
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *rest = test
    assert kind in ("CMD", "CMD-SHELL"), f"healthcheck test {test!r}"
    return rest if kind == "CMD" else ["/bin/sh", "-c", rest[0]]


@dataclass
class Published:
    address: str
    host_port: int | None
    container_port: int
    protocol: str


def published_ports(service) -> list[Published]:
    """The service's `ports`, short or long syntax."""
    found = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            found.append(Published(entry.get("host_ip", ""), int(entry["published"]) if entry.get("published") else None,
                                   int(entry["target"]), entry.get("protocol", "tcp")))
            continue
        text, _, protocol = str(entry).partition("/")
        match = re.fullmatch(r"(?:(?P<address>\[[^\]]+\]|[^:]*):)??(?:(?P<host>\d*):)?(?P<container>\d+)", text)
        assert match, f"port {entry!r}"
        host = match.group("host")
        found.append(Published(match.group("address") or "", int(host) if host else None, int(match.group("container")), protocol or "tcp"))
    return found


@dataclass
class Mount:
    type: str
    source: str
    target: str
    read_only: bool


def mounts(service) -> list[Mount]:
    """The service's `volumes`, short or long syntax (a short source that is a path is a bind mount)."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append(Mount(volume.get("type", "volume"), volume.get("source", ""), volume["target"], bool(volume.get("read_only", False))))
            continue
        source, target, *mode = volume.split(":")
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        found.append(Mount(kind, source, target, "ro" in ",".join(mode).split(",")))
    return found


def within(path: str, directory: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))


def active_services(compose) -> set[str]:
    """The services a plain `docker compose up` starts: those behind no profile."""
    return {name for name, s in compose["services"].items() if not s.get("profiles")}


def service_running(compose, predicate) -> tuple[str, dict]:
    (found,) = [(name, s) for name, s in compose["services"].items() if predicate(s)]
    return found


def test_the_schema_rejects_what_compose_rejects(validator, compose):
    """The vendored schema is strict: it catches a misspelt key and a bad depends_on condition."""
    bad = merge(compose, {"services": {"protolm": {"helthcheck": {"test": ["NONE"]}}}})
    assert errors(validator, bad)
    bad = merge(compose, {"services": {"protolm": {"depends_on": {"bundle-init": {"condition": "service_done"}}}}})
    assert errors(validator, bad)


def test_compose_file_validates_against_the_compose_specification(validator, compose):
    assert errors(validator, load_yaml(COMPOSE_FILE)) == []  # as written
    assert errors(validator, compose) == []  # after interpolation, as Compose checks it
    # with the variables set the way the README describes
    environ = {"PROTOLM_DATA_DIR": "../shared/datasets", "PROTOLM_PUBLISH_ADDRESS": "0.0.0.0", "PROTOLM_IMAGE_TAG": "dev"}
    assert errors(validator, interpolate(load_yaml(COMPOSE_FILE), environ)) == []


def test_gpu_override_validates_alone_and_merged(validator, compose, gpu_override, image, server_name, tmp_path):
    assert errors(validator, gpu_override) == []
    merged = merge(compose, gpu_override)
    assert errors(validator, merged) == []
    server = merged["services"][server_name]
    # the server is built from deploy/Dockerfile's GPU serving stage (onnxruntime-gpu, a CUDA FAISS) ...
    build = server["build"]
    assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert serving_build(image, build["target"]).flavour == "gpu", build["target"]
    # ... and asks for the GPU (a missing one is a start-up error, not a silent fall-back to the CPU)
    assert server_config(image, server, tmp_path).device == "gpu"
    # which Compose reserves: at least one NVIDIA GPU, with the gpu capability
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], device
    assert device.get("count") == "all" or int(device.get("count", 0)) >= 1 or device.get("device_ids"), device
    assert server["deploy"]["resources"]["limits"]  # the CPU limits still apply
    # loading on a GPU takes longer: the health check waits at least as long as the GPU image's own
    start_period = healthcheck(image.stage(build["target"])).start_period
    assert duration_seconds(server["healthcheck"].get("start_period", "0s")) >= start_period


def test_build_targets_exist(compose, gpu_override, image):
    for service in compose["services"].values():
        if "build" in service:
            assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
            assert service["build"]["target"] in image.stages
    assert gpu_override["services"]["protolm"]["build"]["target"] in image.stages


def test_a_fresh_up_trains_the_default_bundle_before_serving(compose, image, server_name, tmp_path):
    services = compose["services"]
    server = services[server_name]
    config = server_config(image, server, tmp_path / "server")
    # the server reads the bundle from a named volume, read-only, mounted at the bundle's parent
    (bundles,) = [m for m in mounts(server) if within(config.bundle_dir, m.target)]
    assert bundles.type == "volume" and bundles.read_only is True, bundles
    assert PurePosixPath(config.bundle_dir).parent == PurePosixPath(bundles.target)
    # the trainers: services whose image's entrypoint is deploy/bundle-init.sh
    trainers = {name for name, s in services.items() if "build" in s
                and program_source(image, s["build"]["target"], container_command(image, s)[0]) == BUNDLE_INIT}
    # one runs on a plain `docker compose up` (so the server can wait for it to succeed), one only when asked for
    up = active_services(compose)
    (init,) = trainers & up
    (retrain,) = trainers - up
    assert server["depends_on"][init]["condition"] == "service_completed_successfully"
    assert server_name in up

    volume = tmp_path / "volume"  # the named volume, shared by the runs below as by the containers
    served_bundle = volume / PurePosixPath(config.bundle_dir).relative_to(bundles.target)
    runs = iter(range(100))

    def run(name):
        """The trainer's container, outside a container: its entrypoint script, command and environment."""
        service = services[name]
        env = container_environment(image, service)
        (mount,) = [m for m in mounts(service) if m.source == bundles.source]
        assert not mount.read_only, f"{name} cannot write the bundle"
        assert within(env["PROTOLM_BUNDLE_DIR"], mount.target), f"{name} writes its bundle outside the volume"
        env["PROTOLM_BUNDLE_DIR"] = str(volume / PurePosixPath(env["PROTOLM_BUNDLE_DIR"]).relative_to(mount.target))
        command = container_command(image, service)
        result, calls = run_script(BUNDLE_INIT, command[1:], env, tmp_path / f"run-{next(runs)}")
        assert result.returncode == 0, result.stdout + result.stderr
        for call in calls:
            assert call.returncode == 0, f"{call.argv}: {call.stderr}"
        return calls, Path(env["PROTOLM_BUNDLE_DIR"])

    # on a fresh volume, bundle-init trains (a named task, the one the image trains by default),
    # exports the model and verifies the bundle, where the server reads it
    calls, written = run(init)
    assert [c.args.command for c in calls] == ["train", "export", "bundle"], [c.argv for c in calls]
    train, export, verify = (c.args for c in calls)
    default_task = invoke_cli(["train", *image.stage(services[init]["build"]["target"]).exec_form("CMD")], {}).args.task
    assert train.task in TASKS and train.task == default_task, train.task
    assert written == served_bundle and Path(export.bundle_dir) == served_bundle and Path(verify.bundle_dir) == served_bundle
    assert (served_bundle / "manifest.json").is_file()
    # on the next `up` it leaves the bundle alone
    calls, _ = run(init)
    assert calls == [], [c.argv for c in calls]
    # the explicit retraining job replaces it
    calls, written = run(retrain)
    assert [c.args.command for c in calls] == ["train", "export", "bundle"], [c.argv for c in calls]
    assert written == served_bundle and Path(calls[1].args.bundle_dir) == served_bundle and calls[1].args.overwrite is True


def test_server_service_matches_the_image(compose, image, server_name, tmp_path):
    server = compose["services"][server_name]
    config = server_config(image, server, tmp_path / "serve")
    # the ports it publishes are the ones the server listens on in the container
    assert {p.container_port for p in published_ports(server)} == {config.port, config.metrics_port}
    # the health check, run as Docker runs it in the container, is `protolm health` asking the
    # server's grpc.health.v1 service on its gRPC port within the check's timeout
    check = server["healthcheck"]
    programs = serving_image_programs(image, server["build"]["target"])
    run = run_health_check(healthcheck_argv(check["test"]), container_environment(image, server), tmp_path / "health", programs)
    invocation = run.invocation
    assert invocation.returncode == 0 and invocation.args.command == "health", invocation.stderr
    host, port = split_address(invocation.client["target"])
    assert host in LOOPBACK and port == config.port, invocation.client
    assert (invocation.client["tls_ca"] is None) == (config.tls_cert is None)
    assert invocation.health_service in (OVERALL, API_SERVICE)
    timeout = duration_seconds(check.get("timeout", DEFAULT_HEALTHCHECK_TIMEOUT))
    assert invocation.client["timeout"] < timeout, f"the client gives up after {invocation.client['timeout']}s, Docker after {timeout}s"
    assert (run.exit_serving, run.exit_not_serving != 0) == (0, True), f"the check exits {run.exit_serving} when SERVING, {run.exit_not_serving} when not"
    # restating the image's check must not cut the time it gives a bundle to load
    assert duration_seconds(check.get("start_period", "0s")) >= healthcheck(image.stage(server["build"]["target"])).start_period
    options = {f.metadata.get("env") or env_name(f.name) for f in dataclasses.fields(ServerConfig)}
    assert set(service_environment(server)) <= options


def test_published_ports_stay_on_loopback_and_do_not_collide(compose):
    seen = {}
    for name, service in compose["services"].items():
        for port in published_ports(service):
            # README: published ports listen on PROTOLM_PUBLISH_ADDRESS, 127.0.0.1 unless it is set
            assert port.address in LOOPBACK, f"{name} publishes {port} beyond this machine by default"
            key = (port.address, port.host_port, port.protocol)
            assert port.host_port is not None and key not in seen, f"{name} and {seen.get(key)} both publish {port.host_port}"
            seen[key] = name
    opened = interpolate(load_yaml(COMPOSE_FILE), {"PROTOLM_PUBLISH_ADDRESS": "0.0.0.0"})
    assert {p.address for s in opened["services"].values() for p in published_ports(s)} == {"0.0.0.0"}


def test_server_service_has_restart_limits_and_a_grace_period_longer_than_the_drain(compose, image, server_name, tmp_path):
    server = compose["services"][server_name]
    config = server_config(image, server, tmp_path)
    # restarted after a crash
    assert server["restart"] in ("always", "unless-stopped") or server["restart"].startswith("on-failure"), server["restart"]
    limits = server["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and limits["memory"]
    # one ONNX Runtime thread per CPU of the limit (0 would start one per host core)
    assert config.intra_op_threads == int(float(limits["cpus"]))
    # `docker compose stop` sends the signal the server drains on, and waits for the drain to finish
    stop_signal = server.get("stop_signal") or getattr(image.stage(server["build"]["target"]).last("STOPSIGNAL"), "arguments", "SIGTERM")
    assert signal.Signals[stop_signal if stop_signal.startswith("SIG") else f"SIG{stop_signal}"] == signal.SIGTERM
    grace = duration_seconds(server.get("stop_grace_period", "10s"))
    assert grace >= config.drain_delay + config.drain_seconds + 5, f"{grace}s to stop, {config.drain_delay} + {config.drain_seconds}s to drain"
    assert server["read_only"] is True and "ALL" in [c.upper() for c in server["cap_drop"]] and not server.get("cap_add")


def host_mounts(service) -> dict[str, str]:
    """container path -> host path (relative to the compose file) of a service's bind mounts."""
    return {m.target: m.source for m in mounts(service) if m.type == "bind"}


def config_file_argument(service) -> str | None:
    return next((a.split("=", 1)[1] for a in service.get("command", []) if a.startswith("--config.file=")), None)


def alert_expressions(config_dir: Path, config: dict) -> list[str]:
    return [rule["expr"] for rule_file in config["rule_files"] for group in load_yaml(config_dir / rule_file)["groups"] for rule in group["rules"]]


def test_prometheus_runs_the_deploy_config_and_scrapes_the_server(compose, image, server_name, tmp_path):
    _, prometheus = service_running(compose, config_file_argument)
    bind_mounts = host_mounts(prometheus)
    config_path = config_file_argument(prometheus)
    assert (REPO / bind_mounts[config_path]).resolve() == (DEPLOY / "prometheus.yml").resolve()
    config = load_yaml(REPO / bind_mounts[config_path])
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert (REPO / bind_mounts[in_container]).is_file()
    # one job scrapes the server, by its service name on the compose network and at the port its
    # metrics listen on in the container (not the published one)
    server = server_config(image, compose["services"][server_name], tmp_path)
    target = f"{server_name}:{server.metrics_port}"
    jobs = {job["job_name"]: [t for c in job.get("static_configs", []) for t in c["targets"]] for job in config["scrape_configs"]}
    scraping = [job for job, targets in jobs.items() if target in targets]
    assert len(scraping) == 1, f"{len(scraping)} jobs scrape {target}: {jobs}"
    (job,) = scraping
    assert jobs[job] == [target], jobs[job]
    # the alert rules that ask about the server's job ask about that one
    named = {j for expr in alert_expressions(DEPLOY, config) for j in re.findall(r'\bjob\s*=~?\s*"([^"]+)"', expr)}
    assert named and named <= {job}, named
    for source in bind_mounts.values():
        assert (REPO / source).exists(), source


def prometheus_listen_port(service) -> int:
    address = next((a.split("=", 1)[1] for a in service.get("command", []) if a.startswith("--web.listen-address=")), ":9090")
    return int(address.rpartition(":")[2])


def test_grafana_provisions_the_prometheus_source_and_the_dashboard(compose):
    prometheus_name, prometheus = service_running(compose, config_file_argument)
    _, grafana = service_running(compose, lambda s: any(k.startswith("GF_") for k in service_environment(s)))
    environment = service_environment(grafana)
    bind_mounts = host_mounts(grafana)
    provisioning = REPO / bind_mounts[environment.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning")]

    def provisioned(kind: str, key: str) -> list[dict]:
        return [item for path in sorted((provisioning / kind).glob("*.y*ml")) for item in load_yaml(path).get(key, [])]

    # the data source is the compose file's Prometheus, by service name and the port it listens on
    (source,) = [s for s in provisioned("datasources", "datasources") if s["type"] == "prometheus"]
    url = urlsplit(source["url"])
    assert (url.hostname, url.port or {"http": 80, "https": 443}[url.scheme]) == (prometheus_name, prometheus_listen_port(prometheus)), source["url"]
    (provider,) = provisioned("dashboards", "providers")
    dashboards_dir = provider["options"]["path"]
    assert REPO / bind_mounts[dashboards_dir] == DASHBOARD.parent
    home = environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / bind_mounts[dashboards_dir] / os.path.relpath(home, dashboards_dir)).is_file()
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    uids |= {v["datasource"]["uid"] for v in dashboard["templating"]["list"]}
    assert uids == {source["uid"]}
