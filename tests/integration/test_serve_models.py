"""Registered models served through the real Ray Serve app: small real training runs are registered in the
app's real MLflow store, replicas pick them up by alias, and moving an alias switches the model under a
session that stays open."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from pipelines.registry import mlflow_store, set_alias
from pipelines.training.common import register_trained
from serve.client import SessionClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _served(app) -> dict:
    r = httpx.get(f"{app.http_url}/v1/models", headers={"Authorization": f"Bearer {app.token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["models"]


async def _wait_for(app, deployment: str, label: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _served(app)[deployment].get("champion") == label:
            return
        await asyncio.sleep(0.5)
    pytest.fail(f"{deployment} did not load {label} within {timeout_s}s: {_served(app)}")


def _first(events: list[dict], type_: str) -> dict:
    return next(e for e in events if e["type"] == type_)


def test_models_endpoint_needs_a_token(app):
    assert httpx.get(f"{app.http_url}/v1/models", timeout=30).status_code == 401


def _unregister_all(settings) -> None:
    with mlflow_store(settings) as client:
        for name in ("sentiment_classifier", "intent_classifier", "kb_reranker"):
            if client.search_registered_models(filter_string=f"name='{name}'"):
                client.delete_registered_model(name)


@pytest.fixture
async def clean_registry(app):
    """The app's store without text models before and after (later tests expect the rule-based models)."""
    _unregister_all(app.settings)
    yield
    _unregister_all(app.settings)
    for deployment in ("sentiment", "intent"):
        await _wait_for(app, deployment, "rules")


@pytest.mark.usefixtures("clean_registry")
async def test_alias_move_switches_models_under_a_live_session(app, small_models):
    settings = app.settings
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(customer_id="cust-0001")
        events = await c.say("I was charged twice and nobody calls me back, this is ridiculous")
        assert _first(events, "sentiment")["model"] == "rules"
        assert _first(events, "intent")["model"] == "rules"
        assert "reranker" not in _first(events, "assist.suggestion")

        first = {
            key: register_trained(small_models[key], settings, alias="champion")
            for key in ("sentiment", "intent", "reranker")
        }
        await _wait_for(app, "sentiment", f"sentiment_classifier@{first['sentiment'].version}")
        await _wait_for(app, "intent", f"intent_classifier@{first['intent'].version}")
        await _wait_for(app, "knowledge_base", f"kb_reranker@{first['reranker'].version}")

        events = await c.say("my bill shows a charge for a visit I never had")
        sentiment, intent = _first(events, "sentiment"), _first(events, "intent")
        suggestion = _first(events, "assist.suggestion")
        assert sentiment["model"] == f"sentiment_classifier@{first['sentiment'].version}"
        assert sentiment["variant"] == "champion" and sentiment["label"] in {
            "negative",
            "neutral",
            "positive",
        }
        assert intent["model"] == f"intent_classifier@{first['intent'].version}"
        assert suggestion["reranker"] == f"kb_reranker@{first['reranker'].version}"
        assert suggestion["articles"] and suggestion["articles"][0]["id"].startswith("kb-")

        second = register_trained(small_models["sentiment"], settings, alias="challenger")
        assert second.semver == "1.1.0"
        set_alias("sentiment_classifier", "champion", second.version, settings)
        await _wait_for(app, "sentiment", f"sentiment_classifier@{second.version}")
        events = await c.say("thanks, that actually helped a lot")
        assert _first(events, "sentiment")["model"] == f"sentiment_classifier@{second.version}"
        assert _first(events, "transcript.final")["text"]  # the same session, still open

        await c.send({"type": "session.end"})
        ended = (await c.recv_until("session.ended"))[-1]
        assert ended["summary"]["variant"] == "champion" and ended["summary"]["turns"] == 3
