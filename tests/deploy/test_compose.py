"""docker-compose.yml and the GPU override against the Compose Specification's JSON schema,
and against the image, the server's options and the Prometheus and Grafana files they mount."""

import hashlib
import json
import os
import re
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest

from service.config import ServerConfig
from tests.deploy.deploy_helpers import (
    COMPOSE_FILE,
    DASHBOARD,
    DEPLOY,
    GPU_OVERRIDE,
    REPO,
    healthcheck_command,
    load_yaml,
    parse_dockerfile,
)

SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\})")


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
        return VARIABLE.sub(replace, value)
    return value


def merge(base, override):
    """Compose's merge of an override file for mappings (the override here has only mappings)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return override


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


def test_gpu_override_validates_alone_and_merged(validator, compose, gpu_override):
    assert errors(validator, gpu_override) == []
    merged = merge(compose, gpu_override)
    assert errors(validator, merged) == []
    protolm = merged["services"]["protolm"]
    assert protolm["build"]["target"] == "serve-gpu" and protolm["build"]["dockerfile"] == "deploy/Dockerfile"
    assert protolm["environment"]["PROTOLM_DEVICE"] == "gpu"
    (device,) = protolm["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert protolm["deploy"]["resources"]["limits"]  # the CPU limits still apply


def test_build_targets_exist(compose, gpu_override, image):
    for service in compose["services"].values():
        if "build" in service:
            assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
            assert service["build"]["target"] in image.stages
    assert gpu_override["services"]["protolm"]["build"]["target"] in image.stages


def test_a_fresh_up_trains_the_default_bundle_before_serving(compose, image):
    services = compose["services"]
    init, train, server = services["bundle-init"], services["train"], services["protolm"]
    # bundle-init runs on a plain `docker compose up`; the server waits for it to succeed
    assert "profiles" not in init
    assert server["depends_on"]["bundle-init"]["condition"] == "service_completed_successfully"
    assert init["build"]["target"] == "train" and train["build"]["target"] == "train"
    assert train["profiles"] == ["train"] and train["environment"]["PROTOLM_INIT_FORCE"] == "1"
    assert init["environment"].get("PROTOLM_INIT_FORCE", "0") != "1"
    bundle_dir = server["environment"]["PROTOLM_BUNDLE_DIR"]
    assert init["environment"]["PROTOLM_BUNDLE_DIR"] == train["environment"]["PROTOLM_BUNDLE_DIR"] == bundle_dir
    # the trainers write the volume, the server mounts it read-only at the bundle's parent
    for trainer in (init, train):
        assert "bundles:/bundles" in trainer["volumes"]
    (mount,) = [v for v in server["volumes"] if isinstance(v, dict) and v["source"] == "bundles"]
    assert mount["read_only"] is True and mount["type"] == "volume"
    assert Path(bundle_dir).parent == Path(mount["target"])
    assert init["command"][:2] == ["--task", "sst2"]


def test_server_service_matches_the_image(compose, image):
    server = compose["services"]["protolm"]
    env = image.stage("serve").env()
    published = {p.rsplit(":", 1)[1] for p in server["ports"]}
    assert published == {env["PROTOLM_PORT"], env["PROTOLM_METRICS_PORT"]}
    assert server["healthcheck"]["test"][0] == "CMD-SHELL"
    assert ["sh", "-c", server["healthcheck"]["test"][1]] == healthcheck_command(image.stage("serve"))
    options = {f"PROTOLM_{f.name.upper()}" for f in fields(ServerConfig)}
    assert set(server["environment"]) <= options


def test_server_service_has_restart_limits_and_a_grace_period_longer_than_the_drain(compose):
    server = compose["services"]["protolm"]
    assert server["restart"] == "unless-stopped"
    limits = server["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and limits["memory"]
    assert int(server["environment"]["PROTOLM_INTRA_OP_THREADS"]) == int(float(limits["cpus"]))
    drain = float(server["environment"].get("PROTOLM_DRAIN_SECONDS", ServerConfig().drain_seconds))
    grace = int(re.fullmatch(r"(\d+)s", server["stop_grace_period"]).group(1))
    assert grace >= drain + 5
    assert server["read_only"] is True and server["cap_drop"] == ["ALL"]


def host_mounts(service) -> dict[str, str]:
    """container path -> host path of a service's bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and volume.startswith("./"):
            source, target = volume.split(":")[:2]
            mounts[target] = source
    return mounts


def test_prometheus_runs_the_deploy_config_and_scrapes_the_server(compose, image):
    prometheus = compose["services"]["prometheus"]
    mounts = host_mounts(prometheus)
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert mounts[config_path] == "./deploy/prometheus.yml"
    config = load_yaml(DEPLOY / "prometheus.yml")
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert (REPO / mounts[in_container]).is_file()
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "protolm"]
    assert job["static_configs"][0]["targets"] == [f"protolm:{image.stage('serve').env()['PROTOLM_METRICS_PORT']}"]
    for source in mounts.values():
        assert (REPO / source).exists(), source


def test_grafana_provisions_the_prometheus_source_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    mounts = host_mounts(grafana)
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(provisioning / "dashboards" / "protolm.yml")["providers"]
    dashboards_dir = provider["options"]["path"]
    assert REPO / mounts[dashboards_dir] == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / mounts[dashboards_dir] / os.path.relpath(home, dashboards_dir)).is_file()
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    uids |= {v["datasource"]["uid"] for v in dashboard["templating"]["list"]}
    assert uids == {source["uid"]}
