"""The serving image's entrypoint, run outside a container, with a real Prometheus beside it.

The server is started with the exact command (ENTRYPOINT + CMD) and environment (ENV) of the
`serve` stage of deploy/Dockerfile, read from the Dockerfile itself. Three values differ, as
they would with `docker run -e ... -v ...`: the bundle directory (the image expects a volume at
/bundles) and the two ports (free loopback ports instead of 50051 and 9464, which may be taken
on a shared machine). /opt/venv/bin on the PATH is this test run's virtual environment; the
image's own install is checked by test_serving_without_torch.py and deploy/install-serve.sh.

Then the image's HEALTHCHECK command must report SERVING, deploy/prometheus.yml must scrape the
server in a real Prometheus, the dashboard's queries must run there, and SIGTERM must drain.
"""

import json
import math
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from service.client import ProtoLMClient
from tests.deploy.deploy_helpers import (
    DASHBOARD,
    DEPLOY,
    Stage,
    dashboard_expressions,
    free_port,
    grafana_to_promql,
    healthcheck_command,
    parse_dockerfile,
    wait_for,
)

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
IMAGE_VENV_BIN = "/opt/venv/bin"
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"  # PATH of the python:*-slim images
RUNTIME_OVERRIDES = ("PROTOLM_BUNDLE_DIR", "PROTOLM_PORT", "PROTOLM_METRICS_PORT")
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
SENTENCES = ["a gripping, beautifully acted film", "a dull and lifeless mess", "it never loses its nerve"]


def image_environment(stage: Stage, home: Path, overrides: dict[str, str]) -> dict[str, str]:
    """What a container of the stage starts with: the base image's PATH, HOME of the image's
    user, then the stage's ENV in order; then the run-time overrides, which must replace values
    the image sets (a test that added settings would not be testing the image)."""
    env = {"PATH": BASE_IMAGE_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
    for key, value in stage.env().items():
        value = value.replace("${PATH}", env["PATH"]).replace("$PATH", env["PATH"])
        if key == "PATH":
            assert value.startswith(IMAGE_VENV_BIN + ":")
            value = str(VENV_BIN) + value[len(IMAGE_VENV_BIN):]
        env[key] = value
    assert set(overrides) == set(RUNTIME_OVERRIDES) and set(overrides) <= set(env), sorted(overrides)
    env.update(overrides)
    return env


@dataclass
class ImageServer:
    process: subprocess.Popen
    env: dict[str, str]
    stage: Stage
    port: int
    metrics_port: int
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@pytest.fixture(scope="module")
def image_server(exported_sst2_bundle, tmp_path_factory):
    stage = parse_dockerfile().stage("serve")
    home = tmp_path_factory.mktemp("protolm-home")
    port, metrics_port = free_port(), free_port()
    env = image_environment(stage, home, {"PROTOLM_BUNDLE_DIR": str(exported_sst2_bundle), "PROTOLM_PORT": str(port), "PROTOLM_METRICS_PORT": str(metrics_port)})
    command = stage.exec_form("ENTRYPOINT") + stage.exec_form("CMD")
    assert command == ["protolm", "serve"]
    executable = shutil.which(command[0], path=env["PATH"])
    assert executable == str(VENV_BIN / "protolm")
    log = home / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([executable, *command[1:]], env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT)
    server = ImageServer(process, env, stage, port, metrics_port, log)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def run_healthcheck(server: ImageServer) -> subprocess.CompletedProcess:
    """The image's HEALTHCHECK command, as Docker runs it inside the container."""
    return subprocess.run(healthcheck_command(server.stage), env=server.env, cwd=server.env["HOME"], capture_output=True, text=True, timeout=30)


def wait_until_healthy(server: ImageServer) -> subprocess.CompletedProcess:
    def check():
        assert server.process.poll() is None, f"the server exited with {server.process.returncode}:\n{server.log_tail()}"
        result = run_healthcheck(server)
        return result if result.returncode == 0 else None

    return wait_for(check, 300, "the image's HEALTHCHECK to pass", interval=1.0)


def test_image_entrypoint_serves_and_its_healthcheck_reports_serving(image_server):
    result = wait_until_healthy(image_server)
    assert result.stdout.strip() == "SERVING"
    assert "0.0.0.0" in image_server.log_tail(100_000)  # listening where the image says
    with ProtoLMClient(f"127.0.0.1:{image_server.port}") as client:
        response = client.classify(SENTENCES)
        assert [r.label for r in response.results] and all(r.label in ("negative", "positive") for r in response.results)
        info = client.model_info()
        assert info.execution_provider == "CPUExecutionProvider"  # PROTOLM_DEVICE=cpu


# --- Prometheus ---------------------------------------------------------------------------


class Prometheus:
    def __init__(self, binary: str, directory: Path, config: dict, port: int):
        self.port = port
        self.base = f"http://127.0.0.1:{self.port}"
        self.config_file = directory / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        for rule_file in config.get("rule_files", []):
            shutil.copy(DEPLOY / rule_file, directory / rule_file)
        self.log = directory / "prometheus.log"
        self.command = [binary, f"--config.file={self.config_file}", f"--storage.tsdb.path={directory / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self.ready, 60, "Prometheus to be ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def ready(self) -> bool:
        assert self.process.poll() is None, f"Prometheus exited:\n{self.log_tail()}"
        with urllib.request.urlopen(f"{self.base}/-/ready", timeout=5) as response:
            return response.status == 200

    def api(self, path: str, **params):
        url = f"{self.base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{path} {params}: HTTP {error.code}: {error.read().decode(errors='replace')}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def prometheus_config(metrics_port: int, prometheus_port: int) -> dict:
    """deploy/prometheus.yml with its targets on the loopback ports and a 1 s scrape interval."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (protolm_targets,) = jobs["protolm"]["static_configs"]
    assert protolm_targets["targets"] == ["protolm:9464"]  # the compose service and the image's metrics port
    protolm_targets["targets"] = [f"127.0.0.1:{metrics_port}"]
    jobs["prometheus"]["static_configs"][0]["targets"] = [f"127.0.0.1:{prometheus_port}"]
    return config


def send_traffic(client: ProtoLMClient, rounds: int) -> int:
    """Classify and Explain calls, one invalid call and one truncated input; returns the number
    of successful Classify calls."""
    for _ in range(rounds):
        client.classify(SENTENCES)
        client.explain(SENTENCES[:1], top_prototypes=2)
    client.classify(["great " * 400])  # longer than the model's max_length: truncated
    with pytest.raises(grpc.RpcError) as error:
        client.classify([])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return rounds + 1


@pytest.mark.skipif(PROMETHEUS is None, reason="the `prometheus` binary is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
def test_prometheus_scrapes_the_server_with_the_deploy_config(image_server, tmp_path):
    wait_until_healthy(image_server)
    port = free_port()
    prometheus = Prometheus(PROMETHEUS, tmp_path, prometheus_config(image_server.metrics_port, port), port)
    if PROMTOOL:
        check = subprocess.run([PROMTOOL, "check", "config", str(prometheus.config_file)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    prometheus.start()
    try:
        with ProtoLMClient(f"127.0.0.1:{image_server.port}") as client:
            # the target is up
            def protolm_target():
                targets = [t for t in prometheus.api("targets")["activeTargets"] if t["labels"]["job"] == "protolm"]
                return targets if targets and targets[0]["health"] == "up" else None

            (target,) = wait_for(protolm_target, 60, "the protolm target to be up")
            assert target["scrapeUrl"] == f"http://127.0.0.1:{image_server.metrics_port}/metrics"
            assert prometheus.value('up{job="protolm"}') == 1.0

            # two waves of traffic, so rates over the scrapes in between are positive
            ok_calls = 0
            for rounds in (5, 10):
                ok_calls += send_traffic(client, rounds)
                expected = ok_calls
                wait_for(lambda: (prometheus.value('sum(protolm_requests_total{method="Classify",code="OK"})') or 0) >= expected,
                         60, f"Prometheus to see {expected} Classify calls")
            image_server.process.send_signal(signal.SIGHUP)  # the admin service is off without its own token
            wait_for(lambda: prometheus.value('protolm_reloads_total{result="ok"}'), 60, "Prometheus to see the reload")
            info = client.model_info()
        time.sleep(3)  # a few more scrapes: rate() windows need two samples

        # every family has values
        for expr in ("protolm_request_duration_seconds_count", "protolm_queue_duration_seconds_count", "protolm_inference_duration_seconds_count",
                     "protolm_batch_size_count", "protolm_batch_tokens_count", "protolm_inputs_total", "protolm_truncated_inputs_total"):
            assert (prometheus.value(f"sum({expr})") or 0) > 0, expr
        assert prometheus.value('sum(protolm_requests_total{code="INVALID_ARGUMENT"})') >= 2
        assert prometheus.value('sum(protolm_inputs_total{method="Explain"})') >= 15
        assert prometheus.query("protolm_queue_depth")
        (model,) = prometheus.query("protolm_model_info")
        assert model["value"][1] == "1"
        assert model["metric"]["name"] == info.name and model["metric"]["version"] == info.version
        assert model["metric"]["provider"] == "CPUExecutionProvider"

        # every dashboard query runs and returns series
        for expr in dashboard_expressions(json.loads(DASHBOARD.read_text())):
            assert prometheus.query(grafana_to_promql(expr)), f"no series for the dashboard's {expr!r}"
        rate = prometheus.value('sum(rate(protolm_requests_total{method="Classify"}[1m]))')
        p50 = prometheus.value("histogram_quantile(0.5, sum by (le) (rate(protolm_request_duration_seconds_bucket[1m])))")
        assert rate > 0 and math.isfinite(p50) and p50 > 0

        # the alert rules load and evaluate without errors, and none fires
        def evaluated_rules():
            (group,) = [g for g in prometheus.api("rules")["groups"] if g["name"] == "protolm"]
            return group["rules"] if all(r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok" for r in group["rules"]) else None

        rules = wait_for(evaluated_rules, 30, "the alert rules to evaluate")
        assert len(rules) >= 5
        assert prometheus.query('ALERTS{alertstate="firing"}') == []
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- prometheus log:\n{prometheus.log_tail()}\n--- server log:\n{image_server.log_tail()}") from None
    finally:
        prometheus.stop()


def test_sigterm_drains_and_the_entrypoint_exits_zero(image_server):
    """Docker stops a container with SIGTERM to the entrypoint (the server: ENTRYPOINT is in exec
    form) and kills it after the grace period; the server must be done before."""
    wait_until_healthy(image_server)
    image_server.process.send_signal(signal.SIGTERM)
    drain = float(image_server.env.get("PROTOLM_DRAIN_SECONDS", 20))
    assert image_server.process.wait(timeout=drain + 10) == 0, image_server.log_tail()
    assert "draining" in image_server.log_tail()
