"""Feast features on the embedded SQLite online store: setup, online reads with a timeout and a default, the
session push and the daily job over a real session store. No Ray."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipelines.config import Settings
from pipelines.features import (
    DEFAULT_FEATURES,
    DEMO_CUSTOMERS,
    FeatureClient,
    recompute_history,
    setup,
)
from pipelines.storage import SessionStore

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def feast_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One real feature store (sample data, apply, materialize) shared by the tests of this module; the
    tests that write use customers of their own."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("feast"), feature_timeout_s=2.0)
    assert setup(settings) is True
    return settings


@pytest.fixture
def client(feast_settings: Settings):
    client = FeatureClient(feast_settings)
    yield client
    client.close()


def test_setup_is_idempotent_and_quick(feast_settings: Settings) -> None:
    t0 = time.perf_counter()
    assert setup(feast_settings) is False
    assert time.perf_counter() - t0 < 5.0
    assert (feast_settings.feast_data_dir / "online.db").exists()


async def test_online_read_returns_materialized_values(client: FeatureClient, no_leaked_tasks) -> None:
    features = await client.online("demo-customer-17")
    expected = DEMO_CUSTOMERS["demo-customer-17"]
    assert features.source == "online"
    assert features.customer_lifetime_value == pytest.approx(expected["customer_lifetime_value"])
    assert features.historical_sentiment_avg == pytest.approx(expected["historical_sentiment_avg"])
    assert features.escalation_history_count == expected["escalation_history_count"]
    assert features.session_count == expected["session_count"]
    sample = await client.online("cust-0001")
    assert sample.source == "online" and sample.session_count >= 1 and sample.customer_lifetime_value > 0


async def test_unknown_customer_gets_defaults(client: FeatureClient) -> None:
    features = await client.online("nobody-here")
    assert features == DEFAULT_FEATURES
    assert features.source == "default"


async def test_slow_store_times_out_to_defaults(feast_settings: Settings, no_leaked_tasks) -> None:
    client = FeatureClient(feast_settings.model_copy(update={"feature_timeout_s": 0.05}))
    try:
        await client.warmup()
        store = client.store()
        real = store.get_online_features

        def slow(*args, **kwargs):
            time.sleep(0.5)
            return real(*args, **kwargs)

        store.get_online_features = slow  # type: ignore[method-assign]
        t0 = time.perf_counter()
        features = await client.online("demo-customer-17")
        assert time.perf_counter() - t0 < 0.3
        assert features.source == "timeout"
        assert features.customer_lifetime_value == DEFAULT_FEATURES.customer_lifetime_value
    finally:
        client.close()


async def test_broken_store_gives_defaults_with_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, feast_repo_path=tmp_path / "missing-repo")
    client = FeatureClient(settings)
    try:
        features = await client.online("demo-customer-17")
    finally:
        client.close()
    assert features.source == "error"


async def test_push_session_updates_running_averages(client: FeatureClient) -> None:
    first = await client.push_session_async("push-new-1", duration_s=100.0, sentiment_avg=0.5, escalated=True)
    assert (first.session_count, first.avg_session_duration, first.escalation_history_count) == (1, 100.0, 1)
    second = client.push_session("push-new-1", duration_s=300.0, sentiment_avg=-0.1, escalated=0)
    assert second.avg_session_duration == pytest.approx(200.0)
    assert second.historical_sentiment_avg == pytest.approx(0.2)
    assert second.escalation_history_count == 1 and second.session_count == 2
    third = client.push_session("push-new-1", duration_s=200.0, sentiment_avg=None, escalated=2)
    assert third.historical_sentiment_avg == pytest.approx(0.2)  # no sentiment: average and weight unchanged
    assert (third.session_count, third.sentiment_session_count, third.escalation_history_count) == (3, 2, 3)
    read_back = await client.online("push-new-1")
    assert read_back.source == "online"
    assert read_back.avg_session_duration == pytest.approx(200.0)
    assert read_back.session_count == 3

    # an existing customer: the push is weighted by the stored session count
    before = await client.online("cust-0002")
    after = client.push_session("cust-0002", duration_s=1000.0, sentiment_avg=1.0, escalated=1)
    n = before.session_count
    assert after.avg_session_duration == pytest.approx((before.avg_session_duration * n + 1000.0) / (n + 1))
    assert after.escalation_history_count == before.escalation_history_count + 1
    assert after.customer_lifetime_value == pytest.approx(before.customer_lifetime_value)  # profile untouched
    assert (await client.online("cust-0002")).session_count == n + 1


async def test_daily_job_recomputes_history_from_the_session_store(
    feast_settings: Settings, client: FeatureClient, no_leaked_tasks
) -> None:
    store = SessionStore(feast_settings.sqlalchemy_url)
    await store.start()
    sessions = [  # (session, customer, duration, sentiment, escalations)
        ("ses_f1", "stored-cust-1", 120.0, 0.4, 0),
        ("ses_f2", "stored-cust-1", 240.0, -0.2, 2),
        ("ses_f3", "cust-0003", 600.0, None, 1),
    ]
    for sid, cid, duration, sentiment, escalations in sessions:
        store.create_session(sid, "demo", cid, "chat")
        summary = {"turns": 3, "escalations": escalations, "sentiment_avg": sentiment, "duration_s": duration}
        store.add_event(
            session_id=sid,
            tenant="demo",
            seq=0,
            payload={"type": "session.ended", "session_id": sid, "summary": summary},
        )
        store.end_session(sid, "demo")
    # a session without a summary: duration from the timestamps, sentiment from its sentiment events
    store.create_session("ses_f4", "demo", "stored-cust-2", "chat")
    store.add_event(session_id="ses_f4", tenant="demo", seq=0, payload={"type": "sentiment", "score": -0.6})
    store.add_event(session_id="ses_f4", tenant="demo", seq=1, payload={"type": "sentiment", "score": -0.2})
    store.add_escalation(
        session_id="ses_f4",
        tenant="demo",
        utterance_id="u1",
        rule="r",
        reason="x",
        queue="q",
        priority="high",
    )
    store.end_session("ses_f4", "demo")
    store.create_session("ses_active", "demo", "stored-cust-3", "chat")  # still running: not counted
    before = await client.online("cust-0003")
    await store.close()

    assert recompute_history(feast_settings) == 3

    one = await client.online("stored-cust-1")
    assert one.source == "online"
    assert (one.session_count, one.escalation_history_count) == (2, 2)
    assert one.avg_session_duration == pytest.approx(180.0)
    assert one.historical_sentiment_avg == pytest.approx(0.1)
    two = await client.online("stored-cust-2")
    assert (two.session_count, two.escalation_history_count) == (1, 1)
    assert two.historical_sentiment_avg == pytest.approx(-0.4)
    assert 0 <= two.avg_session_duration < 60
    three = await client.online("cust-0003")  # sample baseline + the stored session
    n = before.session_count
    assert three.session_count == n + 1
    assert three.avg_session_duration == pytest.approx((before.avg_session_duration * n + 600.0) / (n + 1))
    assert three.historical_sentiment_avg == pytest.approx(before.historical_sentiment_avg)
    assert three.escalation_history_count == before.escalation_history_count + 1
    assert (await client.online("stored-cust-3")).source == "default"
    # untouched customers keep their history
    assert (await client.online("cust-0004")).source == "online"
