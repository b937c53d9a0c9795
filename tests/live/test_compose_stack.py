"""`docker compose up` for real: the images built from deploy/Dockerfile, the stack of
docker-compose.yml run with a Docker engine, every container on the host network.

`make test-deploy` runs this module (CI does, after `make test`). Where no engine can be
started it skips with the reason, except under CI (CI=true), where it fails. The compose file
the engine runs is generated from the shipped one: Debian's Compose v1 takes no top-level
`name:` and no `ports:` with host networking, so those go; every service joins the host
network with its own loopback port; Grafana (no image to be had here) is replaced by running
every panel's query against the real Prometheus; bundle-init trains a tiny model through the
same image, entrypoint and volume users get. The tests run in file order, on one stack.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from service.client import ProtoLMClient
from tests.live import docker_env
from tests.live.docker_env import PROMETHEUS_IMAGE, REPO, SERVE_IMAGE, TRAIN_IMAGE, docker_cli, free_port, run

pytestmark = pytest.mark.deploy
PROJECT = "protolm-ci"
TINY_TRAINING = ["--task", "sst2", "--max-train-samples", "300", "--max-eval-samples", "200", "--epochs", "1"]
SCRAPE_SECONDS = 2


def wait_for(condition, seconds: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s"
        time.sleep(every)


class Stack:
    """The generated compose project and ways to look into it."""

    def __init__(self, directory: Path, data_dir: Path):
        self.directory = directory
        self.grpc_port, self.metrics_port, self.prometheus_port = free_port(), free_port(), free_port()
        self.file = directory / "docker-compose.yml"
        self.file.write_text(yaml.safe_dump(self._render(data_dir), sort_keys=False))

    def _render(self, data_dir: Path) -> dict:
        shipped = yaml.safe_load((REPO / "docker-compose.yml").read_text())
        compose = {key: copy.deepcopy(value) for key, value in shipped.items() if key in ("services", "volumes")}
        services = compose["services"]
        del services["grafana"]
        compose["volumes"].pop("grafana-data", None)
        for service in services.values():
            service["network_mode"] = "host"
            service.pop("ports", None)
            service.pop("build", None)
        for name in ("bundle-init", "train"):
            services[name]["image"] = TRAIN_IMAGE
            services[name]["command"] = TINY_TRAINING
            services[name]["volumes"] = ["bundles:/bundles", f"{data_dir}:/data:ro"]
        services["protolm"]["image"] = SERVE_IMAGE
        services["protolm"]["environment"].update(
            PROTOLM_HOST="127.0.0.1", PROTOLM_PORT=str(self.grpc_port), PROTOLM_METRICS_PORT=str(self.metrics_port)
        )
        prometheus_yml = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
        prometheus_yml["global"].update(scrape_interval=f"{SCRAPE_SECONDS}s", scrape_timeout="1s", evaluation_interval=f"{SCRAPE_SECONDS}s")
        for job in prometheus_yml["scrape_configs"]:
            port = self.metrics_port if job["job_name"] == "protolm" else self.prometheus_port
            for static in job["static_configs"]:
                static["targets"] = [f"127.0.0.1:{port}"]
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(prometheus_yml, sort_keys=False))
        prometheus = services["prometheus"]
        prometheus["image"] = PROMETHEUS_IMAGE
        prometheus["command"] = [*prometheus["command"], f"--web.listen-address=127.0.0.1:{self.prometheus_port}"]
        prometheus["volumes"] = [
            f"{self.directory / 'prometheus.yml'}:/etc/prometheus/prometheus.yml:ro",
            f"{REPO / 'deploy' / 'prometheus-alerts.yml'}:/etc/prometheus/prometheus-alerts.yml:ro",
            "prometheus-data:/prometheus",
        ]
        return compose

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        return run("docker-compose", "-p", PROJECT, "-f", str(self.file), *args, timeout=timeout, check=check, cwd=self.directory)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, service: str) -> dict:
        return json.loads(run(docker_cli(), "inspect", self.container(service)).stdout)[0]

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service, check=False).stdout

    def prometheus(self, path: str, **query: str) -> dict:
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/{path}?{urllib.parse.urlencode(query)}"
        return json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]

    def metric(self, name: str) -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name) and not line.startswith("#"))

    def client(self) -> ProtoLMClient:
        return ProtoLMClient(f"127.0.0.1:{self.grpc_port}", timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, shared_data_dir):
    try:
        docker_env.start_engine()
    except docker_env.EngineUnavailable as reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Docker engine under CI: {reason}")
        pytest.skip(f"no Docker engine here: {reason}")
    started = time.monotonic()
    docker_env.base_images()
    packages = docker_env.LocalPackageServer(tmp_path_factory.mktemp("pip"))
    try:
        docker_env.protolm_images(packages)
    finally:
        packages.close()
    print(f"\nimages ready in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{tag} {docker_env.image_size_mb(tag):.0f} MB" for tag in (SERVE_IMAGE, TRAIN_IMAGE, PROMETHEUS_IMAGE)))
    networks_before = run(docker_cli(), "network", "ls", "-q").stdout.split()
    deployed = Stack(tmp_path_factory.mktemp("compose"), shared_data_dir)
    deployed.networks_before = networks_before
    deployed.compose("down", "-v", "--remove-orphans", check=False)
    try:
        up = time.monotonic()
        deployed.compose("up", "-d", "protolm", "prometheus", timeout=1200)
        print(f"compose up (bundle-init trained and exported) in {time.monotonic() - up:.0f} s")
        yield deployed
    finally:
        print(deployed.logs("protolm")[-3000:])
        deployed.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        leftovers = run(docker_cli(), "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
        assert not leftovers, f"containers left behind: {leftovers}"


def test_the_serving_image_has_no_torch_and_no_build_secrets(stack):
    probe = "import importlib.util as u; print([m for m in ('torch', 'transformers') if u.find_spec(m)])"
    assert run(docker_cli(), "run", "--rm", "--network", "host", "--entrypoint", "python", SERVE_IMAGE, "-c", probe).stdout.strip() == "[]"
    for image in (SERVE_IMAGE, TRAIN_IMAGE):
        found = run(docker_cli(), "run", "--rm", "--network", "host", "--entrypoint", "sh", image, "-c",
                    "ls /run/secrets 2>/dev/null; ls /etc/pip.conf 2>/dev/null; env | grep -c PIP_ || true").stdout.split()
        assert found == ["0"], f"{image} keeps build settings: {found}"


def test_bundle_init_trained_exported_and_verified_into_the_volume(stack):
    state = stack.inspect("bundle-init")["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0
    log = stack.logs("bundle-init")
    assert "bundle-init: training: protolm train --task sst2" in log and "is ready" in log and ": ok (" in log


def test_the_server_becomes_healthy_by_its_own_healthcheck_unprivileged_and_read_only(stack):
    wait_for(lambda: stack.inspect("protolm")["State"].get("Health", {}).get("Status") == "healthy", 300, "protolm healthy", every=2)
    container = stack.inspect("protolm")
    assert container["HostConfig"]["ReadonlyRootfs"] is True
    (bundles,) = [m for m in container["Mounts"] if m["Destination"] == "/bundles"]
    assert bundles["RW"] is False
    assert run(docker_cli(), "exec", container["Id"], "id", "-u").stdout.strip() != "0"
    assert run(docker_cli(), "exec", container["Id"], "sh", "-c", "touch /bundles/x /x", check=False).returncode != 0
    health = run(str(Path(sys.executable).parent / "protolm"), "health", "--server", f"127.0.0.1:{stack.grpc_port}", check=False)
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"


def test_classify_and_explain_answer(stack):
    long_text = " ".join(["a long and winding sentence about a film"] * 20)  # truncated: the truncation panel has data
    with stack.client() as client:
        classified = client.classify(["a gripping, beautifully acted film", "ninety minutes of tedium", long_text])
        assert [r.label for r in classified.results[:2]] and classified.results[2].truncated
        explained = client.explain(["a gripping, beautifully acted film"], top_prototypes=3, nearest_examples=2)
        result = explained.results[0]
        assert len(result.prototypes) == 3 and result.prototypes[0].exemplar.text and len(result.nearest_examples) == 2
        with pytest.raises(grpc.RpcError) as error:  # the error-ratio panel needs a failed call
            client.classify([""])
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def calls_in_a_loop(stack, stop: threading.Event, outcomes: list[str]) -> None:
    with stack.client() as client:
        while not stop.is_set():
            try:
                client.classify(["steady traffic through the change"])
                outcomes.append("OK")
            except grpc.RpcError as error:
                outcomes.append(error.code().name)
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    return


def test_sighup_reloads_with_no_failed_call(stack):
    reloads = stack.metric('protolm_reloads_total{result="ok"}')
    stop, outcomes = threading.Event(), []
    caller = threading.Thread(target=calls_in_a_loop, args=(stack, stop, outcomes))
    caller.start()
    wait_for(lambda: outcomes.count("OK") >= 20, 60, "traffic before the reload", every=0.1)
    stack.compose("kill", "-s", "SIGHUP", "protolm")
    wait_for(lambda: stack.metric('protolm_reloads_total{result="ok"}') > reloads, 120, "the reload", every=0.5)
    served = outcomes.count("OK")
    wait_for(lambda: outcomes.count("OK") >= served + 20, 60, "traffic after the reload", every=0.1)
    stop.set()
    caller.join(60)
    assert set(outcomes) == {"OK"}, {code: outcomes.count(code) for code in set(outcomes)}


def test_prometheus_scrapes_the_service_and_loads_the_alert_rules(stack):
    wait_for(lambda: any(t["labels"]["job"] == "protolm" and t["health"] == "up" for t in stack.prometheus("targets")["activeTargets"]),
             60, "protolm target up")
    # The target is up after its first scrape, which may precede the earlier tests' calls: the
    # request series appear with the next scrape.
    served = {"protolm_requests_total", "protolm_request_duration_seconds_bucket", "protolm_model_info"}
    wait_for(lambda: served <= set(stack.prometheus("label/__name__/values")), 60, "the request series scraped")
    groups = stack.prometheus("rules")["groups"]
    assert groups and all(g["rules"] for g in groups)
    checked = run(docker_cli(), "exec", stack.container("prometheus"), "promtool", "check", "rules", "/etc/prometheus/prometheus-alerts.yml")
    assert "SUCCESS" in checked.stdout


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "protolm.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r'=~"\$\w+"', '=~".*"', target["expr"]).replace("$__rate_interval", "1m")
            queries.append((panel["title"], expr))
    return queries


def test_every_grafana_panel_query_returns_data(stack):
    with stack.client() as client:  # traffic over several scrapes, so rates have two samples
        deadline = time.monotonic() + 4 * SCRAPE_SECONDS
        while time.monotonic() < deadline:
            client.classify(["a fine film", "a dull one"])
            client.explain(["a fine film"])
    time.sleep(2 * SCRAPE_SECONDS)  # the last samples scraped
    empty = [f"{title}: {expr}" for title, expr in panel_queries() if not stack.prometheus("query", query=expr)["result"]]
    assert not empty, "panels with no data:\n" + "\n".join(empty)


def test_a_second_start_of_bundle_init_does_nothing(stack):
    stack.compose("up", "--no-deps", "bundle-init", timeout=300)
    assert "already holds a bundle; nothing to do" in stack.logs("bundle-init")
    assert stack.inspect("bundle-init")["State"]["ExitCode"] == 0


def test_stop_drains_with_no_failed_admitted_call(stack):
    stop, outcomes = threading.Event(), []
    callers = [threading.Thread(target=calls_in_a_loop, args=(stack, stop, outcomes)) for _ in range(4)]
    for caller in callers:
        caller.start()
    wait_for(lambda: outcomes.count("OK") >= 40, 60, "traffic before the stop", every=0.1)
    served = outcomes.count("OK")
    stack.compose("stop", "protolm", timeout=120)
    stop.set()
    for caller in callers:
        caller.join(60)
    assert outcomes.count("OK") > served  # the drain delay kept serving
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, {code: outcomes.count(code) for code in set(outcomes)}
    assert stack.inspect("protolm")["State"]["ExitCode"] == 0
    assert "draining" in stack.logs("protolm")
    assert run(docker_cli(), "network", "ls", "-q").stdout.split() == stack.networks_before  # no network was created
