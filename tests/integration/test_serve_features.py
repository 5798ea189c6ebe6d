"""Customer features in the real Serve app: escalations read the Feast online store, and the post-call
analytics are pushed back into the customer's history when the session ends, under the session's tenant (the
dev token's ``demo``): the same customer id of another tenant is untouched."""

from __future__ import annotations

import pytest

from pipelines.features import FeatureClient
from serve.client import SessionClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_healthz_reports_the_feature_store(app):
    import httpx

    assert httpx.get(f"{app.http_url}/healthz", timeout=30).json()["features"] == "ready"


async def test_high_value_customer_escalation_and_history_push(app):
    features = FeatureClient(app.settings)
    before = features.read("demo", "demo-customer-17")
    assert before.source == "online" and before.customer_lifetime_value > 12000

    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(customer_id="demo-customer-17")
        await c.say("I was charged twice and this is the third time I'm calling, it's ridiculous")
        events = await c.say("this is unacceptable, get me a supervisor now")
        events += await c.drain(0.5)
        escalation = next(
            e for e in events if e["type"] == "escalation" and e["rule"] == "supervisor_request"
        )
        assert escalation["priority"] == "urgent"  # high, raised by the customer's value and history
        assert {"high_value_falling_sentiment", "repeat_escalator", "vip_routing"} <= set(
            escalation["factors"]
        )
        assert escalation["queue"] == "vip_care"
        ended = (await c.end())[-1]
    quality = ended["summary"]["quality"]
    assert ended["type"] == "session.ended" and 0 <= quality["score"] <= 100

    # the push follows `session.ended` (a slow feature store never delays the summary): wait for it
    import asyncio
    import time

    deadline = time.monotonic() + 15.0
    after = features.read("demo", "demo-customer-17")
    while after.session_count == before.session_count and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        after = features.read("demo", "demo-customer-17")
    assert after.session_count == before.session_count + 1
    assert after.escalation_history_count >= before.escalation_history_count + 1
    assert after.historical_sentiment_avg < before.historical_sentiment_avg  # an unhappy call lowers it
    assert features.read("acme", "demo-customer-17").source == "default"  # pushed under demo only
    features.close()


async def test_unknown_customer_gets_default_features_and_normal_routing(app):
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(customer_id="walk-in-0001")
        events = await c.say("get me a supervisor please")
        events += await c.drain(0.5)
        escalation = next(e for e in events if e["type"] == "escalation")
        assert escalation["priority"] == "high" and "factors" not in escalation
        assert escalation["queue"] == "supervisor"
        await c.end()
