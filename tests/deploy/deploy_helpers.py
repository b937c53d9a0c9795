"""Readers for the deployment files (Dockerfile stages, YAML, PromQL) shared by tests/deploy."""

from __future__ import annotations

import json
import re
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_OVERRIDE = DEPLOY / "docker-compose.gpu.yml"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "protolm.json"


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


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def stage(self, name: str) -> Stage:
        return self.stages[name]


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


def healthcheck_command(stage: Stage) -> list[str]:
    """The command of a ``HEALTHCHECK [--options] CMD ["exec", "form"]`` instruction."""
    instruction = stage.last("HEALTHCHECK")
    assert instruction is not None, f"stage {stage.name} has no HEALTHCHECK"
    match = re.match(r"(?:--[a-z-]+=\S+\s+)*CMD\s+(\[.+\])$", instruction.arguments)
    assert match, f"line {instruction.line}: expected HEALTHCHECK [--options] CMD [exec form]"
    return json.loads(match.group(1))


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
