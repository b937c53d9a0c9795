"""The Grafana dashboard and the alert rules name only series the server really exports: a
server (fake backend, real gRPC, real /metrics) is driven through every code path that creates
a labelled series, scraped, and compared with every PromQL expression."""

import asyncio
import json
import re
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from tests.deploy.deploy_helpers import DASHBOARD, DEPLOY, dashboard_expressions, exported_series_names, load_yaml, promql_metric_names
from tests.service_helpers import fake_model, running_server, server_config

PROMETHEUS_MADE = {"up"}  # series Prometheus itself writes for every target
TARGET_LABELS = {"instance", "job"}  # labels Prometheus adds to every scraped series


async def scrape_after_traffic() -> str:
    async with running_server(server_config(admin_without_token=True), lambda path, cfg: fake_model(cfg)) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        api, admin = pb_grpc.ProtoLMServiceStub(channel), pb_grpc.ProtoLMAdminServiceStub(channel)
        await api.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text="a fine film"), pb.TextInput(text="long " * 200)]))
        await api.Explain(pb.ExplainRequest(inputs=[pb.TextInput(text="a dull film")], options=pb.ExplainOptions(top_prototypes=2)))
        await api.GetModelInfo(pb.GetModelInfoRequest())
        with pytest.raises(grpc.aio.AioRpcError):
            await api.Classify(pb.ClassifyRequest())
        await admin.Reload(pb.ReloadRequest())
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode())
        await channel.close()
    return body


@pytest.fixture(scope="module")
def scrape():
    body = asyncio.run(scrape_after_traffic())
    families = list(text_string_to_metric_families(body))
    labels: dict[str, set[str]] = {}
    for family in families:
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return exported_series_names(families), labels


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def alert_expressions() -> list[str]:
    return [rule["expr"] for group in load_yaml(DEPLOY / "prometheus-alerts.yml")["groups"] for rule in group["rules"]]


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr) for label in clause.split(",") if label.strip()}


def matcher_labels(expr: str) -> set[str]:
    return {m for block in re.findall(r"\{([^}]*)\}", expr) for m in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", block)}


def test_the_scrape_carries_every_metric_family_with_values(scrape):
    names, labels = scrape
    for series in ("protolm_requests_total", "protolm_request_duration_seconds_bucket", "protolm_queue_duration_seconds_bucket",
                   "protolm_inference_duration_seconds_bucket", "protolm_batch_size_bucket", "protolm_batch_tokens_bucket",
                   "protolm_queue_depth", "protolm_inputs_total", "protolm_truncated_inputs_total", "protolm_reloads_total", "protolm_model_info"):
        assert series in labels, f"{series} has no sample after the traffic"
    assert {"method", "code"} <= labels["protolm_requests_total"]


def test_dashboard_queries_name_only_exported_metrics_and_labels(scrape, dashboard):
    names, labels = scrape
    exprs = dashboard_expressions(dashboard)
    assert len(exprs) >= 20
    for expr in exprs:
        metrics = promql_metric_names(expr)
        assert metrics, f"no metric in {expr!r}"
        assert metrics <= names, f"{sorted(metrics - names)} in {expr!r} are not exported by the server"
        known = set().union(*(labels.get(m, set()) for m in metrics)) | TARGET_LABELS
        assert grouping_labels(expr) | matcher_labels(expr) <= known, f"unknown label in {expr!r}"


def test_alert_rules_name_only_exported_metrics_and_labels(scrape):
    names, labels = scrape
    for expr in alert_expressions():
        metrics = promql_metric_names(expr)
        assert metrics and metrics <= names | PROMETHEUS_MADE, f"{sorted(metrics - names - PROMETHEUS_MADE)} in {expr!r}"
        known = set().union(*(labels.get(m, set()) for m in metrics)) | TARGET_LABELS
        assert grouping_labels(expr) | matcher_labels(expr) <= known, f"unknown label in {expr!r}"


def matchers(expr: str) -> dict[str, tuple[str, str]]:
    """label -> (operator, value) of an expression's label matchers."""
    return {m.group(1): (m.group(2), m.group(3)) for block in re.findall(r"\{([^}]*)\}", expr)
            for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"', block)}


def quantiles(exprs: list[str]) -> list[float]:
    """The quantiles a panel's histogram_quantile expressions show."""
    return sorted(float(q) for e in exprs for q in re.findall(r"histogram_quantile\(\s*([\d.]+)", e))


def test_dashboard_has_the_panels_operators_asked_for(dashboard):
    panels = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard["panels"] if p["type"] != "row"}
    variables = {v["name"] for v in dashboard["templating"]["list"]}

    def panels_reading(metric: str, condition=lambda expr: True) -> list[list[str]]:
        """The panels with an expression that reads ``metric`` and meets ``condition``."""
        found = [exprs for exprs in panels.values() if any(metric in promql_metric_names(e) and condition(e) for e in exprs)]
        assert found, f"no panel reads {metric} that way"
        return found

    def filtered_by_variable(label: str):
        """The expression selects ``label`` by the dashboard variable of that name (its picker filters the panel)."""
        return lambda expr: label in variables and matchers(expr).get(label, ("", ""))[1] == f"${label}"

    # request rate, per method and status code
    assert panels_reading("protolm_requests_total", lambda e: {"method", "code"} <= grouping_labels(e) and re.search(r"\brate\s*\(", e))
    # request latency at p50, p95 and p99, for the methods picked
    latency = panels_reading("protolm_request_duration_seconds_bucket", filtered_by_variable("method"))
    assert [0.5, 0.95, 0.99] in [quantiles(exprs) for exprs in latency], [quantiles(exprs) for exprs in latency]
    # queue time at the same quantiles
    assert [0.5, 0.95, 0.99] in [quantiles(exprs) for exprs in panels_reading("protolm_queue_duration_seconds_bucket")]
    assert panels_reading("protolm_batch_size_bucket")
    assert panels_reading("protolm_queue_depth")
