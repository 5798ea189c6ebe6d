"""Metrics of the real Serve app: the ingress's ``GET /metrics`` (this replica, prometheus_client) and Ray's
metrics port (the cluster's view, ``ray_`` prefix) after a real chat session."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines import metrics
from serve.client import SessionClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = ("guardrail", "sentiment", "planner", "assist", "escalation")


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(rows: list, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(s.value for s in rows if s.name == name and want <= set(s.labels.items()))


async def scrape(app) -> list:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(f"{app.http_url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


async def test_ingress_metrics_show_the_session_and_its_stages(app):
    before = await scrape(app)
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(customer_id="cust-metrics")
        await c.say("Hi, why was I charged twice on my bill this month?")
        during = await scrape(app)
        await c.end()
        session_id = c.session_id
    after = await scrape(app)

    def delta(rows: list, name: str, **labels: str) -> float:
        return value(rows, name, **labels) - value(before, name, **labels)

    chat = {"tenant": "demo", "channel": "chat"}
    assert delta(during, "switchboard_concurrent_sessions", **chat) == 1
    assert delta(after, "switchboard_concurrent_sessions", **chat) == 0
    assert delta(after, "switchboard_sessions_started_total", **chat) == 1
    assert delta(after, "switchboard_sessions_ended_total", status="ended", **chat) == 1
    assert delta(after, "switchboard_client_events_total", type="chat.message", **chat) == 1
    for stage in STAGES:
        assert delta(after, "switchboard_stage_latency_ms_count", stage=stage, **chat) == 1, stage
    assert delta(after, "switchboard_assist_latency_ms_count", **chat) == 1
    assert delta(after, "switchboard_sentiment_turns_total", **chat) == 1
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(f"{app.http_url}/metrics")).text
    assert session_id not in text and "cust-metrics" not in text


async def test_rays_metrics_port_exports_them_prefixed(app):
    """The production scrape path: the names and `le` buckets the dashboards and alert rules query."""
    import ray

    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(customer_id="cust-metrics-2")
        await c.say("How do I reset my password?")
        await c.end()
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    wanted = {
        "ray_switchboard_sessions_started_total",
        "ray_switchboard_concurrent_sessions",
        "ray_switchboard_stage_latency_ms_bucket",
        "ray_switchboard_stage_latency_ms_count",
        "ray_switchboard_assist_latency_ms_bucket",
        "ray_switchboard_client_events_total",
    }
    deadline, names, rows = time.monotonic() + 90, set(), []
    async with httpx.AsyncClient(timeout=30) as http:
        while time.monotonic() < deadline:  # Ray exports application metrics every few seconds
            text = (await http.get(url)).text
            rows = [s for s in samples(text) if s.name.startswith("ray_switchboard_")]
            names = {s.name for s in rows}
            if wanted <= names:
                break
            await asyncio.sleep(2)
    assert wanted <= names, sorted(wanted - names)
    assert names <= metrics.exposed_names("ray_"), sorted(names - metrics.exposed_names("ray_"))
    assert value(rows, "ray_switchboard_sessions_started_total", tenant="demo", channel="chat") >= 1
    buckets = {s.labels["le"] for s in rows if s.name == "ray_switchboard_assist_latency_ms_bucket"}
    assert "500.0" in buckets  # what the dashboards' `le="500.0"` selects
    assert value(rows, "ray_switchboard_stage_latency_ms_count", stage="assist", tenant="demo") >= 1
