"""The Grafana dashboards and Prometheus alert rules in cluster/ reference only metrics that exist: the ones
pipelines/metrics.py defines (as scraped from Ray's metrics port: ``ray_`` prefix) or Ray / Ray Serve built-ins."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipelines import metrics

pytestmark = pytest.mark.unit

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
DASHBOARDS = ("live-operations", "latency-slos", "model-quality", "cost")

#: Ray and Ray Serve built-ins the dashboards use (ray 2.60: serve/_private/request_ingress_metrics.py,
#: replica.py, deployment_state.py; dashboard/modules/reporter for the node metrics)
BUILTINS = {
    "ray_serve_num_ongoing_http_requests",
    "ray_serve_num_ongoing_grpc_requests",
    "ray_serve_num_http_requests_total",
    "ray_serve_num_http_error_requests_total",
    "ray_serve_deployment_processing_latency_ms_bucket",
    "ray_serve_deployment_replica_healthy",
    "ray_node_cpu_utilization",
    "ray_node_cpu_count",
    "ray_node_gpus_utilization",
}
_NAME = re.compile(r"\b(ray_[a-z0-9_]+)")
_RECORDED = re.compile(r"\b(switchboard:[a-z0-9_:]+)")


def _exprs(node: object) -> list[str]:
    """Every PromQL string in a dashboard: target expressions and template-variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_exprs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_exprs(item))
    return found


def _rules() -> list[dict]:
    doc = yaml.safe_load((CLUSTER / "prometheus" / "alerts.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_is_importable_grafana_json(name):
    board = json.loads((CLUSTER / "grafana" / f"{name}.json").read_text())
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["panels"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"] and all(
            t["expr"] and t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"]
        )
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_metrics_exist(name):
    board = json.loads((CLUSTER / "grafana" / f"{name}.json").read_text())
    known = metrics.exposed_names("ray_") | BUILTINS
    used = {m for expr in _exprs(board) for m in _NAME.findall(expr)}
    assert used, name
    assert used <= known, sorted(used - known)
    for expr in _exprs(board):  # balanced, and the unprefixed names never slip in (the cluster stores ray_*)
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        assert not re.search(r"(?<![a-z_])switchboard_[a-z]", expr), expr


def test_dashboards_cover_the_operators_kpis():
    text = "\n".join((CLUSTER / "grafana" / f"{name}.json").read_text() for name in DASHBOARDS)
    for metric in (
        "ray_switchboard_concurrent_sessions",
        "ray_switchboard_transcription_latency_ms_bucket",
        "ray_switchboard_sentiment_score_avg",
        "ray_switchboard_suggestion_feedback_total",
        "ray_switchboard_escalations_total",
        "ray_switchboard_errors_total",
        "ray_switchboard_stage_latency_ms_bucket",
        "ray_switchboard_assist_latency_ms_bucket",
        "ray_switchboard_reply_cache_lookups_total",
        "ray_switchboard_asr_real_time_factor_bucket",
        "ray_switchboard_queue_depth",
    ):
        assert metric in text, metric


def test_alert_rules_parse_and_cover_the_slos():
    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    alerts = [r for r in rules if "alert" in r]
    for rule in rules:
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
    for alert in alerts:
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in ("page", "ticket")
        assert alert["annotations"]["summary"] and alert["annotations"]["runbook"]
    by_slo: dict[str, list[dict]] = {}
    for alert in alerts:
        by_slo.setdefault(alert["labels"]["slo"], []).append(alert)
    assert set(by_slo) == {"transcription-latency", "assist-latency", "api-error-rate", "availability", "capacity"}

    def expr_of(alert: dict) -> str:  # the alert's PromQL with recording rules expanded
        expr = alert["expr"]
        for rule in rules:
            if "record" in rule:
                expr = expr.replace(rule["record"], rule["expr"])
        return expr

    (transcription,) = by_slo["transcription-latency"]
    assert "ray_switchboard_transcription_latency_ms_bucket" in expr_of(transcription)
    assert "> 2000" in transcription["expr"]
    (assist,) = by_slo["assist-latency"]
    assert "ray_switchboard_assist_latency_ms_bucket" in expr_of(assist) and "> 500" in assist["expr"]
    assert any("0.001" in a["expr"] for a in by_slo["availability"])  # the 99.9 % error budget
    capacity = {name for a in by_slo["capacity"] for name in _NAME.findall(a["expr"])}
    assert {"ray_switchboard_overload", "ray_switchboard_session_queue_depth"} <= capacity  # shedding, queueing
    for rule in rules:
        expr = rule["expr"]
        assert set(_NAME.findall(expr)) <= metrics.exposed_names("ray_") | BUILTINS, expr
        assert set(_RECORDED.findall(expr)) <= recorded, expr
