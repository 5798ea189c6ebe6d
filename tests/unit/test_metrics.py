"""Metrics from a real in-process pipeline (real models, real SQLite store), read back the way Prometheus reads
them: the text ``GET /metrics`` serves, parsed with prometheus_client's own parser."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines import metrics
from pipelines.events import ChatMessage, SessionStart
from pipelines.ports import ModelPorts
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.session import Pipeline
from pipelines.storage import SessionStore
from tests.fakes import Failing, Recorder

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("no_leaked_tasks")]

STAGES = ("guardrail", "sentiment", "planner", "assist", "escalation")
#: every label key a switchboard metric may carry (``le``: histogram buckets)
LABEL_KEYS = {
    "tenant", "channel", "model", "stage", "code", "retryable", "status", "type", "queue", "priority", "label",
    "source", "fallback", "action", "variant", "champion", "challenger", "agree", "kind", "hit", "le",
    "deployment", "outcome",
}  # fmt: skip


def scrape() -> dict[tuple[str, frozenset], float]:
    """Every sample of ``metrics.render()``: (series name, labels) → value."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def ports(models: ModelPorts, **overrides) -> ModelPorts:
    parts = dict(
        guardrail=models.guardrail,
        sentiment=models.sentiment,
        embedder=models.embedder,
        intent=models.intent,
        retriever=models.retriever,
    )
    parts.update(overrides)
    return ModelPorts(**parts)


@pytest.fixture
async def env(settings, local_models):
    store = SessionStore(settings.sqlalchemy_url)
    await store.start()
    review = ReviewQueue(store, load_or_create_key(settings.resolved_review_key_file))

    def build(**overrides) -> Pipeline:
        return Pipeline(ports(local_models, **overrides), store, review, settings)

    yield build
    await store.close()


async def test_sessions_stages_errors_and_outcomes_are_counted(env, local_models):
    tenant = "metrics-a"  # a tenant of its own: other tests' sessions do not move these series
    before = scrape()
    pipeline = env(retriever=Failing(local_models.retriever, error=RuntimeError("kb down")))
    rec = Recorder()
    one, _ = await pipeline.start_session(tenant, SessionStart(channel="chat", customer_id="c-1"))
    two, _ = await pipeline.start_session(tenant, SessionStart(channel="sms", customer_id="c-2"))

    mid = scrape()
    assert value(mid, "switchboard_concurrent_sessions", tenant=tenant, channel="chat") == 1
    assert value(mid, "switchboard_concurrent_sessions", tenant=tenant, channel="sms") == 1
    assert (
        value(mid, "switchboard_sessions_started_total", tenant=tenant)
        - value(before, "switchboard_sessions_started_total", tenant=tenant)
        == 2
    )

    # the knowledge base is down and no articles are cached: assist's fallback fails too → stage_failed
    await pipeline.handle(one, ChatMessage(text="I was charged twice this month, this is ridiculous"), rec)
    assert [e["code"] for e in rec.of("error")] == ["stage_failed"]

    during = scrape()
    for stage in STAGES:
        assert (
            value(during, "switchboard_stage_latency_ms_count", stage=stage, tenant=tenant, channel="chat")
            == 1
        )
        assert value(during, "switchboard_stage_latency_ms_sum", stage=stage, tenant=tenant) > 0
    # the buckets are cumulative and end in +Inf = count
    assert (
        value(during, "switchboard_stage_latency_ms_bucket", stage="sentiment", tenant=tenant, le="+Inf") == 1
    )
    assert value(during, "switchboard_stage_fallbacks_total", stage="assist", tenant=tenant) == 1
    assert value(during, "switchboard_errors_total", tenant=tenant, channel="chat", code="stage_failed") == 1
    assert value(during, "switchboard_errors_total", tenant=tenant, retryable="true") == 1
    assert value(during, "switchboard_client_events_total", tenant=tenant, type="chat.message") == 1
    assert value(during, "switchboard_client_events_total", tenant=tenant, type="session.start") == 2
    assert value(during, "switchboard_turns_total", tenant=tenant) == 1
    sentiment = rec.of("sentiment")[0]
    assert value(during, "switchboard_sentiment_turns_total", tenant=tenant, label=sentiment["label"]) == 1
    assert value(
        during, "switchboard_sentiment_score_avg", tenant=tenant, model=sentiment["model"]
    ) == pytest.approx(sentiment["score"], abs=1e-6)

    await pipeline.end_session(one, rec)
    await pipeline.end_session(two, None, status="disconnected")
    after = scrape()
    assert value(after, "switchboard_concurrent_sessions", tenant=tenant) == 0
    assert value(after, "switchboard_sessions_ended_total", tenant=tenant, status="ended") == 1
    assert value(after, "switchboard_sessions_ended_total", tenant=tenant, status="disconnected") == 1
    assert value(after, "switchboard_session_duration_seconds_count", tenant=tenant) == 2


async def test_assist_latency_is_observed_per_suggestion(env):
    tenant = "metrics-b"
    pipeline, rec = env(), Recorder()
    state, _ = await pipeline.start_session(tenant, SessionStart(channel="chat", customer_id="c-1"))
    await pipeline.handle(state, ChatMessage(text="How do I reset my password?"), rec)
    await pipeline.end_session(state, rec)
    suggestion = rec.of("assist.suggestion")[0]
    samples = scrape()
    assert (
        value(samples, "switchboard_assist_latency_ms_count", tenant=tenant, source=suggestion["source"]) == 1
    )
    observed = value(samples, "switchboard_assist_latency_ms_sum", tenant=tenant)
    assert observed == pytest.approx(suggestion["latency_ms"])


async def test_labels_hold_no_session_ids_customer_ids_or_pii(env):
    tenant = "metrics-c"
    pipeline, rec = env(), Recorder()
    state, _ = await pipeline.start_session(tenant, SessionStart(channel="chat", customer_id="cust-8841"))
    raw = "I'm Maria Gonzalez, email maria.g@example.com, card 4111 1111 1111 1111, phone (415) 555-0132"
    await pipeline.handle(state, ChatMessage(text=raw), rec)
    await pipeline.end_session(state, rec)

    text = metrics.render().decode()
    assert state.session_id not in text
    ids = {e.get("utterance_id") for e in rec.events} | {e.get("suggestion_id") for e in rec.events}
    for secret in ("Maria", "Gonzalez", "maria.g@", "4111", "555-0132", "cust-8841", *filter(None, ids)):
        assert secret not in text, secret
    for (name, labels), _ in scrape().items():
        assert name.startswith("switchboard_"), name
        keys = {k for k, _ in labels}
        assert keys <= LABEL_KEYS, (name, keys - LABEL_KEYS)
        for key, val in labels:
            assert not re.search(r"(ses|utt|sug)_[0-9a-f]{8,}", val), (name, key, val)
            assert len(val) <= 80


def test_every_metric_is_defined_once_with_both_exposition_names():
    assert all(name.startswith("switchboard_") and not name.endswith("_total") for name in metrics.METRICS)
    families = {f.name for f in text_string_to_metric_families(metrics.render().decode())}
    # prometheus_client names counter families without `_total`; every definition is registered
    assert set(metrics.METRICS) <= families
    plain, ray = metrics.exposed_names(), metrics.exposed_names("ray_")
    assert "switchboard_errors_total" in plain and "ray_switchboard_errors_total" in ray
    assert {
        "ray_switchboard_transcription_latency_ms_bucket",
        "ray_switchboard_transcription_latency_ms_sum",
        "ray_switchboard_transcription_latency_ms_count",
    } <= ray
    assert "ray_switchboard_concurrent_sessions" in ray
    # the operators' KPIs (DESIGN.md) all have a metric behind them
    for kpi in (
        "switchboard_concurrent_sessions",
        "switchboard_transcription_latency_ms",
        "switchboard_sentiment_score_avg",
        "switchboard_suggestion_feedback",
        "switchboard_escalations",
        "switchboard_errors",
    ):
        assert kpi in metrics.METRICS
    for d in metrics.METRICS.values():
        if d.kind == "histogram":
            assert d.buckets and all(b > 0 for b in d.buckets), d.name  # Ray histograms need positive bounds
        assert "session_id" not in d.labels and "customer_id" not in d.labels


def test_gauges_never_go_negative_and_counters_ignore_zero():
    metrics.session_ended("metrics-d", "email", "ended", 1.0)  # an end without a start (a resumed replica)
    assert value(scrape(), "switchboard_concurrent_sessions", tenant="metrics-d", channel="email") == 0
    metrics.count_tokens("m@1", "prompt", 0)
    assert "switchboard_generation_tokens{kind=prompt,model=m@1}" not in metrics.snapshot()
