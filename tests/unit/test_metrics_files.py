"""cluster/metrics/: the Prometheus scrape config targets the local head's metrics port, and every metric the
Grafana dashboard queries is one Ray Serve or raygbm exports (names read from their code, no Ray started)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
METRICS = ROOT / "cluster" / "metrics"
DASHBOARD = METRICS / "grafana" / "dashboards" / "raygbm.json"
# How Ray's metrics agent names a ray.util.metrics metric in Prometheus (checked against a live agent once:
# Counter("x_rows") -> ray_x_rows_total, Counter("x_total") -> ray_x_total, Gauge("x") -> ray_x,
# Histogram("x_ms") -> ray_x_ms_bucket / _sum / _count).
PREFIX = "ray_"
SUFFIXES = {"Gauge": [""], "Counter": ["_total"], "Histogram": ["_bucket", "_sum", "_count"]}


def _name_pattern(node: ast.expr) -> str | None:
    """A metric name argument as a regex: a literal, or an f-string whose fields match any name part."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else "[a-z0-9_]+" for v in node.values)
    return None


def declared_metrics(root: Path) -> list[tuple[str, str]]:
    """(name regex, kind) of every Counter/Gauge/Histogram(...) call with a name under ``root`` (tests skipped)."""
    found = []
    for path in root.rglob("*.py"):
        if "tests" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            kind = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if kind not in SUFFIXES:
                continue
            arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
            pattern = _name_pattern(arg) if arg is not None else None
            if pattern:
                found.append((pattern, kind))
    return found


def exported_names() -> list[re.Pattern]:
    """Regexes of every Prometheus series name Ray Serve and raygbm export."""
    import ray

    out = []
    for root in (Path(ray.__file__).parent / "serve", ROOT / "src" / "raygbm"):
        for pattern, kind in declared_metrics(root):
            for suffix in SUFFIXES[kind]:
                if kind == "Counter" and pattern.endswith("_total"):
                    suffix = ""  # already named as Prometheus names a counter
                out.append(re.compile(PREFIX + pattern + suffix))
    return out


def queried_metrics(expr: str) -> set[str]:
    """The metric names in a PromQL expression: what is left once strings, label matchers, ranges, grouping
    clauses, label_values' label and function names are removed."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^]]*\]|\b(?:by|without)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\blabel_values\(([^,()]+),[^)]*\)", r"(\1)", expr)
    return set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))


def dashboard_exprs(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_json_is_a_grafana_dashboard_on_the_provisioned_datasource():
    dash = json.loads(DASHBOARD.read_text())
    (source,) = yaml.safe_load((METRICS / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())["datasources"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] and dash["title"]
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    assert graphs and all(p["targets"] and p["datasource"]["uid"] == source["uid"] for p in graphs)
    assert all(t["datasource"]["uid"] == source["uid"] for p in graphs for t in p["targets"])
    # The endpoint (latency, requests, replicas) and the drift monitor each have panels.
    queried = set().union(*map(queried_metrics, dashboard_exprs(dash)))
    assert {"ray_serve_http_request_latency_ms_bucket", "ray_serve_num_http_requests_total",
            "ray_serve_deployment_replica_healthy"} <= queried
    assert {m for m in queried if m.startswith("ray_raygbm_drift_")}


def test_every_metric_the_dashboard_queries_is_exported():
    exported = exported_names()
    queried = set().union(*map(queried_metrics, dashboard_exprs(json.loads(DASHBOARD.read_text()))))
    assert len(queried) >= 10
    missing = sorted(m for m in queried if not any(p.fullmatch(m) for p in exported))
    assert missing == []


def test_the_metric_check_refuses_an_unexported_name():
    exported = exported_names()
    names = queried_metrics('histogram_quantile(0.99, sum by (le, deployment) (rate(ray_serve_http_latency_ms_bucket{a="b"}[1m])))')
    assert names == {"ray_serve_http_latency_ms_bucket"}
    assert queried_metrics("label_values(ray_serve_deployment_replica_healthy, application)") == {
        "ray_serve_deployment_replica_healthy"}
    assert not any(p.fullmatch("ray_serve_http_latency_ms_bucket") for p in exported)
    assert not any(p.fullmatch("raygbm_drift_verdict") for p in exported)  # Ray's prefix is part of the name
    assert any(p.fullmatch("ray_raygbm_drift_windows_total") for p in exported)


def test_prometheus_scrapes_the_port_the_local_head_exports():
    config = yaml.safe_load((METRICS / "prometheus.yml").read_text())
    (target,) = [t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
    env = (ROOT / "cluster" / "local" / "env.sh").read_text()
    port = re.search(r"RAY_METRICS_EXPORT_PORT=\$\{RAY_METRICS_EXPORT_PORT:-(\d+)\}", env).group(1)
    assert target == f"127.0.0.1:{port}"
    assert '--metrics-export-port "$RAY_METRICS_EXPORT_PORT"' in (ROOT / "cluster" / "local" / "start.sh").read_text()
