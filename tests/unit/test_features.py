"""Feast features on the embedded SQLite online store: setup, online reads with a timeout and a default, the
session push and the daily job over a real session store, all scoped by tenant (tenant ``acme`` tries to read and
overwrite the features of tenant ``demo``'s customers). No Ray."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import Settings
from pipelines.features import (
    DEFAULT_FEATURES,
    DEMO_CUSTOMERS,
    SAMPLE_TENANT,
    FeatureClient,
    main,
    recompute_history,
    setup,
)
from pipelines.keys import encrypted_store

pytestmark = pytest.mark.unit

MALFORMED_TENANTS = ["", "a:b", "demo\n", "../demo", ".", "x" * 65, "de mo", None, 17]


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


def test_every_sample_row_and_feature_view_carries_the_tenant(feast_settings: Settings, client) -> None:
    for name in ("customer_profile.parquet", "customer_history.parquet", "customer_history_baseline.parquet"):
        rows = pd.read_parquet(feast_settings.feast_data_dir / name)
        assert set(rows["tenant"]) == {SAMPLE_TENANT} == {"demo"}, name
        assert {"demo-customer-17", "demo-caller-9", "cust-0001"} <= set(rows["customer_id"])
    store = client.store()
    for view in ("customer_profile", "customer_history"):
        assert set(store.get_feature_view(view).join_keys) == {"tenant", "customer_id"}


async def test_online_read_returns_materialized_values(client: FeatureClient, no_leaked_tasks) -> None:
    features = await client.online("demo", "demo-customer-17")
    expected = DEMO_CUSTOMERS["demo-customer-17"]
    assert features.source == "online"
    assert features.customer_lifetime_value == pytest.approx(expected["customer_lifetime_value"])
    assert features.historical_sentiment_avg == pytest.approx(expected["historical_sentiment_avg"])
    assert features.escalation_history_count == expected["escalation_history_count"]
    assert features.session_count == expected["session_count"]
    sample = await client.online("demo", "cust-0001")
    assert sample.source == "online" and sample.session_count >= 1 and sample.customer_lifetime_value > 0


async def test_unknown_customer_gets_defaults(client: FeatureClient) -> None:
    features = await client.online("demo", "nobody-here")
    assert features == DEFAULT_FEATURES
    assert features.source == "default"


async def test_another_tenant_cannot_read_the_features(client: FeatureClient) -> None:
    assert (await client.online("demo", "demo-customer-17")).source == "online"
    for tenant in ("acme", "demo2", "DEMO", "demo.", "demo_"):
        stolen = await client.online(tenant, "demo-customer-17")
        assert stolen == DEFAULT_FEATURES and stolen.source == "default", tenant
        assert client.read(tenant, "cust-0001") == DEFAULT_FEATURES, tenant


async def test_a_push_for_another_tenant_never_changes_the_customer(client: FeatureClient) -> None:
    demo_before = await client.online("demo", "cust-0005")
    assert demo_before.source == "online"
    pushed = await client.push_session_async(
        "acme", "cust-0005", duration_s=30.0, sentiment_avg=-1.0, escalated=3
    )
    # acme's cust-0005 is a new customer: its history starts from this session, not from demo's
    assert (pushed.session_count, pushed.avg_session_duration, pushed.escalation_history_count) == (
        1,
        30.0,
        3,
    )
    assert pushed.customer_lifetime_value == DEFAULT_FEATURES.customer_lifetime_value
    acme = await client.online("acme", "cust-0005")
    assert acme.source == "online" and acme.session_count == 1 and acme.historical_sentiment_avg == -1.0
    assert await client.online("demo", "cust-0005") == demo_before

    # and the other way round: demo's push leaves acme's row alone
    client.push_session("demo", "cust-0005", duration_s=10.0, sentiment_avg=None, escalated=0)
    assert (await client.online("demo", "cust-0005")).session_count == demo_before.session_count + 1
    assert await client.online("acme", "cust-0005") == acme


@pytest.mark.parametrize("tenant", MALFORMED_TENANTS)
async def test_a_malformed_tenant_is_refused_before_any_read_or_write(
    feast_settings: Settings, tenant
) -> None:
    client = FeatureClient(feast_settings)
    try:
        with pytest.raises(ValueError, match="invalid tenant"):
            await client.online(tenant, "demo-customer-17")
        with pytest.raises(ValueError, match="invalid tenant"):
            client.read(tenant, "demo-customer-17")
        with pytest.raises(ValueError, match="invalid tenant"):
            client.push_session(tenant, "demo-customer-17", duration_s=1.0, sentiment_avg=None, escalated=0)
        with pytest.raises(ValueError, match="invalid tenant"):
            await client.push_session_async(
                tenant, "demo-customer-17", duration_s=1.0, sentiment_avg=None, escalated=0
            )
        assert client.status() == "unavailable"  # refused up front: the store was never even loaded
    finally:
        client.close()


async def test_the_tenant_cannot_be_left_out(client: FeatureClient) -> None:
    with pytest.raises(TypeError):
        await client.online("demo-customer-17")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        client.push_session("demo-customer-17", duration_s=1.0, sentiment_avg=None, escalated=0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="invalid customer id"):
        await client.online("demo", "")


async def test_warmup_loads_the_store(feast_settings: Settings) -> None:
    client = FeatureClient(feast_settings)
    try:
        assert client.status() == "unavailable"
        await client.warmup()
        assert client.status() == "ready"
        assert (await client.online("demo", "demo-caller-9")).source == "online"
    finally:
        client.close()


async def test_concurrent_pushes_for_one_customer_are_serialized_per_tenant(client: FeatureClient) -> None:
    pushes = [
        client.push_session_async(tenant, "push-locked-1", duration_s=60.0, sentiment_avg=0.0, escalated=1)
        for _ in range(6)
        for tenant in ("demo", "acme")
    ]
    await asyncio.gather(*pushes)  # read-modify-write under the (tenant, customer) lock: no update lost
    for tenant in ("demo", "acme"):
        got = await client.online(tenant, "push-locked-1")
        assert (got.session_count, got.escalation_history_count) == (6, 6), tenant
    assert client._lock_for("demo", "push-locked-1") is client._lock_for("demo", "push-locked-1")
    assert client._lock_for("demo", "push-locked-1") is not client._lock_for("acme", "push-locked-1")


def test_cli_get_needs_the_tenant(feast_settings: Settings, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(feast_settings.data_dir))
    monkeypatch.setenv("SWITCHBOARD_FEATURE_TIMEOUT_S", "5")
    assert main(["get", "demo", "demo-customer-17"]) == 0
    assert '"source": "online"' in capsys.readouterr().out
    assert main(["get", "acme", "demo-customer-17"]) == 0
    assert '"source": "default"' in capsys.readouterr().out
    assert main(["get", "a:b", "demo-customer-17"]) == 1
    assert "invalid tenant" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["get", "demo-customer-17"])


def test_sources_without_a_tenant_column_are_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    data = settings.feast_data_dir
    data.mkdir(parents=True)
    now = pd.Timestamp.now(tz="UTC")
    legacy = pd.DataFrame({"customer_id": ["c1"], "event_timestamp": [now], "created": [now]})
    legacy.assign(customer_lifetime_value=1.0, product_usage_metrics=0.5).to_parquet(
        data / "customer_profile.parquet"
    )
    legacy.assign(avg_session_duration=1.0).to_parquet(data / "customer_history.parquet")
    with pytest.raises(ValueError, match="no `tenant` column"):
        setup(settings)
    assert not (data / "registry.db").exists()  # refused before apply: nothing registered


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
        features = await client.online("demo", "demo-customer-17")
        assert time.perf_counter() - t0 < 0.3
        assert features.source == "timeout"
        assert features.customer_lifetime_value == DEFAULT_FEATURES.customer_lifetime_value
    finally:
        client.close()


async def test_broken_store_gives_defaults_with_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, feast_repo_path=tmp_path / "missing-repo")
    client = FeatureClient(settings)
    try:
        features = await client.online("demo", "demo-customer-17")
    finally:
        client.close()
    assert features.source == "error"


async def test_push_session_updates_running_averages(client: FeatureClient) -> None:
    first = await client.push_session_async(
        "demo", "push-new-1", duration_s=100.0, sentiment_avg=0.5, escalated=True
    )
    assert (first.session_count, first.avg_session_duration, first.escalation_history_count) == (1, 100.0, 1)
    second = client.push_session("demo", "push-new-1", duration_s=300.0, sentiment_avg=-0.1, escalated=0)
    assert second.avg_session_duration == pytest.approx(200.0)
    assert second.historical_sentiment_avg == pytest.approx(0.2)
    assert second.escalation_history_count == 1 and second.session_count == 2
    third = client.push_session("demo", "push-new-1", duration_s=200.0, sentiment_avg=None, escalated=2)
    assert third.historical_sentiment_avg == pytest.approx(0.2)  # no sentiment: average and weight unchanged
    assert (third.session_count, third.sentiment_session_count, third.escalation_history_count) == (3, 2, 3)
    read_back = await client.online("demo", "push-new-1")
    assert read_back.source == "online"
    assert read_back.avg_session_duration == pytest.approx(200.0)
    assert read_back.session_count == 3

    # an existing customer: the push is weighted by the stored session count
    before = await client.online("demo", "cust-0002")
    after = client.push_session("demo", "cust-0002", duration_s=1000.0, sentiment_avg=1.0, escalated=1)
    n = before.session_count
    assert after.avg_session_duration == pytest.approx((before.avg_session_duration * n + 1000.0) / (n + 1))
    assert after.escalation_history_count == before.escalation_history_count + 1
    assert after.customer_lifetime_value == pytest.approx(before.customer_lifetime_value)  # profile untouched
    assert (await client.online("demo", "cust-0002")).session_count == n + 1


async def test_daily_job_recomputes_history_from_the_session_store(
    feast_settings: Settings, client: FeatureClient, no_leaked_tasks
) -> None:
    store = encrypted_store(feast_settings)  # as the ingress writes: payloads sealed with tenant data keys
    await store.start()
    sessions = [  # (session, customer, duration, sentiment, escalations)
        ("ses_f1", "stored-cust-1", 120.0, 0.4, 0),
        ("ses_f2", "stored-cust-1", 240.0, -0.2, 2),
        ("ses_f3", "cust-0003", 600.0, None, 1),
    ]
    acme_sessions = [("ses_a1", "cust-0003", 50.0, 0.9, 0), ("ses_a2", "stored-cust-1", 10.0, -1.0, 5)]
    for tenant, rows in (("demo", sessions), ("acme", acme_sessions)):
        for sid, cid, duration, sentiment, escalations in rows:
            store.create_session(sid, tenant, cid, "chat")
            summary = {
                "turns": 3,
                "escalations": escalations,
                "sentiment_avg": sentiment,
                "duration_s": duration,
            }
            store.add_event(
                session_id=sid,
                tenant=tenant,
                seq=0,
                payload={"type": "session.ended", "session_id": sid, "summary": summary},
            )
            store.end_session(sid, tenant)
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
    before = await client.online("demo", "cust-0003")
    await store.close()

    assert recompute_history(feast_settings) == 5  # (tenant, customer) pairs: 3 of demo, 2 of acme

    one = await client.online("demo", "stored-cust-1")
    assert one.source == "online"
    assert (one.session_count, one.escalation_history_count) == (2, 2)
    assert one.avg_session_duration == pytest.approx(180.0)
    assert one.historical_sentiment_avg == pytest.approx(0.1)
    two = await client.online("demo", "stored-cust-2")
    assert (two.session_count, two.escalation_history_count) == (1, 1)
    assert two.historical_sentiment_avg == pytest.approx(-0.4)
    assert 0 <= two.avg_session_duration < 60
    three = await client.online("demo", "cust-0003")  # sample baseline + the stored session
    n = before.session_count
    assert three.session_count == n + 1
    assert three.avg_session_duration == pytest.approx((before.avg_session_duration * n + 600.0) / (n + 1))
    assert three.historical_sentiment_avg == pytest.approx(before.historical_sentiment_avg)
    assert three.escalation_history_count == before.escalation_history_count + 1
    assert (await client.online("demo", "stored-cust-3")).source == "default"
    # untouched customers keep their history
    assert (await client.online("demo", "cust-0004")).source == "online"
    # acme's customers with the same ids: only acme's sessions, no demo baseline, and demo's rows unchanged
    acme_three = await client.online("acme", "cust-0003")
    assert (acme_three.session_count, acme_three.escalation_history_count) == (1, 0)
    assert acme_three.avg_session_duration == pytest.approx(50.0)
    assert acme_three.historical_sentiment_avg == pytest.approx(0.9)
    acme_one = await client.online("acme", "stored-cust-1")
    assert (acme_one.session_count, acme_one.escalation_history_count) == (1, 5)
    assert (await client.online("demo", "stored-cust-1")).escalation_history_count == 2
    history = pd.read_parquet(feast_settings.feast_data_dir / "customer_history.parquet")
    assert history["tenant"].notna().all() and {"demo", "acme"} <= set(history["tenant"])
