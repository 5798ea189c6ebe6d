"""Feast features on the real local Redis (the production online store): setup, read, push, read back, and
tenant ``acme`` neither reading nor overwriting tenant ``demo``'s customer of the same id.

Uses a dedicated database (``SWITCHBOARD_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/13``) and deletes
only the keys of the ``switchboard`` Feast project there afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.config import Settings
from pipelines.features import DEMO_CUSTOMERS, FeatureClient, apply, generate_sample_data, setup

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("SWITCHBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def _project_keys(r) -> list[bytes]:
    # Feast's Redis keys are the serialized entity key followed by the project name
    return [k for k in r.scan_iter(count=1000) if k.endswith(b"switchboard")]


@pytest.fixture
def redis_db():
    import redis

    r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        r.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it (see .ci/run)")
    stale = _project_keys(r)
    if stale:
        r.delete(*stale)
    yield r
    keys = _project_keys(r)
    if keys:
        r.delete(*keys)
    r.close()


async def test_redis_read_push_round_trip(tmp_path: Path, redis_db, no_leaked_tasks) -> None:
    settings = Settings(data_dir=tmp_path, feast_online_store=REDIS_URL, feature_timeout_s=1.0)
    assert setup(settings) is True
    assert len(_project_keys(redis_db)) >= 200  # one hash per customer
    assert setup(settings) is False  # idempotent: the marker and a probe read say it is done

    client = FeatureClient(settings)
    try:
        await client.warmup()
        demo = await client.online("demo", "demo-customer-17")
        assert demo.source == "online"
        assert demo.customer_lifetime_value == pytest.approx(
            DEMO_CUSTOMERS["demo-customer-17"]["customer_lifetime_value"]
        )
        assert (await client.online("demo", "nobody-here")).source == "default"

        first = await client.push_session_async(
            "demo", "redis-push-1", duration_s=60.0, sentiment_avg=-0.5, escalated=1
        )
        second = await client.push_session_async(
            "demo", "redis-push-1", duration_s=180.0, sentiment_avg=0.3, escalated=0
        )
        assert first.session_count == 1 and second.session_count == 2
        got = await client.online("demo", "redis-push-1")
        assert got.source == "online"
        assert got.avg_session_duration == pytest.approx(120.0)
        assert got.historical_sentiment_avg == pytest.approx(-0.1)
        assert got.escalation_history_count == 1

        n = demo.session_count
        pushed = await client.push_session_async(
            "demo", "demo-customer-17", duration_s=0.0, sentiment_avg=None, escalated=True
        )
        assert pushed.avg_session_duration == pytest.approx(demo.avg_session_duration * n / (n + 1))
        assert (
            await client.online("demo", "demo-customer-17")
        ).escalation_history_count == demo.escalation_history_count + 1

        # tenant isolation on Redis: the tenant is part of the key
        keys_before = len(_project_keys(redis_db))
        demo_now = await client.online("demo", "demo-customer-17")
        assert (await client.online("acme", "demo-customer-17")).source == "default"
        acme = await client.push_session_async(
            "acme", "demo-customer-17", duration_s=5.0, sentiment_avg=1.0, escalated=0
        )
        assert acme.session_count == 1 and acme.customer_lifetime_value == 0.0
        assert len(_project_keys(redis_db)) == keys_before + 1  # a key of its own, next to demo's
        assert await client.online("demo", "demo-customer-17") == demo_now
        acme_now = await client.online("acme", "demo-customer-17")
        assert acme_now.historical_sentiment_avg == pytest.approx(1.0)
        with pytest.raises(ValueError, match="invalid tenant"):
            await client.online("demo:x", "demo-customer-17")
    finally:
        client.close()


async def test_redis_down_gives_error_defaults(tmp_path: Path, caplog) -> None:
    # a registered repository whose Redis is down (nothing listens on port 1): defaults, and say why
    settings = Settings(data_dir=tmp_path, feast_online_store="redis://127.0.0.1:1/0", feature_timeout_s=3.0)
    generate_sample_data(settings, customers=5)
    apply(settings)
    client = FeatureClient(settings)
    try:
        first = await client.online("demo", "demo-customer-17")
        second = await client.online("demo", "demo-customer-17")
    finally:
        client.close()
    assert first.source == second.source == "error"
    assert sum("feature read failed" in r.getMessage() for r in caplog.records) == 1  # once a minute
