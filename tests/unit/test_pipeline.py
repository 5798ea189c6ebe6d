"""The session pipeline end to end in-process: real models, real SQLite store, fakes only to inject faults."""

from __future__ import annotations

import re

import pytest
import sqlalchemy

from pipelines.errors import ProtocolError
from pipelines.events import ChatMessage, SessionStart, SuggestionFeedback
from pipelines.ports import ModelPorts
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.session import Pipeline
from pipelines.storage import SessionStore, metadata
from tests.fakes import Failing, Recorder

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("no_leaked_tasks")]


def make_ports(models: ModelPorts, **overrides) -> ModelPorts:
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
        return Pipeline(make_ports(local_models, **overrides), store, review, settings)

    yield build, store, review
    await store.close()


async def start(pipeline: Pipeline, rec: Recorder, tenant: str = "demo"):
    state, started = await pipeline.start_session(tenant, SessionStart(channel="chat", customer_id="c-1"))
    await rec(started)
    return state


async def test_customer_turn_yields_every_event_in_order(env):
    build, store, _ = env
    pipeline, rec = build(), Recorder()
    state = await start(pipeline, rec)
    await pipeline.handle(
        state, ChatMessage(text="I was charged twice on my last bill, can I get a refund?"), rec
    )
    types = [e["type"] for e in rec.events]
    assert types[:2] == ["session.started", "transcript.final"]
    assert types.index("sentiment") < types.index("assist.suggestion")
    assert types.index("intent") < types.index("assist.suggestion")
    intent = rec.of("intent")[0]
    assert intent["intent"] == "billing" and intent["confidence"] >= 0.6
    suggestion = rec.of("assist.suggestion")[0]
    assert suggestion["source"] == "articles_only" and len(suggestion["articles"]) == 3
    assert suggestion["articles"][0]["id"].startswith("kb-billing-")
    assert suggestion["text"] and suggestion["latency_ms"] > 0
    assert rec.of("sentiment")[0]["label"] == "negative"


async def test_pii_is_redacted_before_anything_else_sees_it(env):
    build, store, _ = env
    pipeline, rec = build(), Recorder()
    state = await start(pipeline, rec)
    raw = "I'm Maria Gonzalez, email maria.g@example.com, card 4111 1111 1111 1111, phone (415) 555-0132"
    await pipeline.handle(state, ChatMessage(text=raw), rec)
    final = rec.of("transcript.final")[0]
    for value in ("Maria", "Gonzalez", "maria.g@example.com", "4111 1111 1111 1111", "555-0132"):
        assert value not in str(rec.events)
    assert {"[EMAIL]", "[CARD]", "[PHONE]", "[PERSON]"} <= set(re.findall(r"\[[A-Z_]+\]", final["text"]))
    redaction = rec.of("redaction")[0]
    for ent in redaction["entities"]:
        assert final["text"][ent["start"] : ent["end"]] == f"[{ent['type']}]"
    transcript = await store.transcript("demo", state.session_id)
    assert transcript[0]["text"] == final["text"]


async def test_sentiment_failure_falls_back_to_rules(env):
    build, _, _ = env
    pipeline, rec = build(sentiment=Failing(None, error=RuntimeError("model crashed"))), Recorder()
    state = await start(pipeline, rec)
    await pipeline.handle(state, ChatMessage(text="This is ridiculous, nobody calls back."), rec)
    sentiment = rec.of("sentiment")[0]
    assert sentiment["model"] == "rules:fallback" and sentiment["label"] == "negative"
    assert rec.of("assist.suggestion"), "the rest of the turn still runs"


async def test_sentiment_timeout_falls_back(env, settings, local_models):
    build, _, _ = env
    pipeline = build(sentiment=Failing(local_models.sentiment, delay=0.5))
    pipeline.sentiment.timeout_s = 0.05
    rec = Recorder()
    state = await start(pipeline, rec)
    await pipeline.handle(state, ChatMessage(text="thanks, that helped a lot"), rec)
    assert rec.of("sentiment")[0]["model"] == "rules:fallback"


async def test_guardrail_failure_blocks_and_holds_encrypted_for_review(env):
    build, store, review = env
    pipeline, rec = build(guardrail=Failing(None, error=RuntimeError("NER engine down"))), Recorder()
    state = await start(pipeline, rec)
    raw = "my ssn is 123-45-6789 and I need help"
    await pipeline.handle(state, ChatMessage(text=raw), rec)
    assert [e["type"] for e in rec.events] == ["session.started", "error"]
    error = rec.events[-1]
    assert error["code"] == "pii_check_failed" and error["retryable"] is True
    await store.flush()
    with store.engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("select count(*) from utterances")).scalar() == 0
        item = conn.execute(sqlalchemy.text("select * from review_items")).mappings().one()
        dump = " ".join(str(conn.execute(t.select()).fetchall()) for t in metadata.sorted_tables)
    assert "123-45-6789" not in dump
    assert (
        review.decrypt(
            tenant="demo",
            session_id=state.session_id,
            utterance_id=item["utterance_id"],
            nonce=item["nonce"],
            ciphertext=item["ciphertext"],
        )
        == raw
    )


async def test_kb_search_failure_serves_cached_articles(env, local_models):
    build, _, _ = env
    retriever = Failing(local_models.retriever)
    pipeline, rec = build(retriever=retriever), Recorder()
    state = await start(pipeline, rec)
    await pipeline.handle(state, ChatMessage(text="how do I set up a payment plan for my bill"), rec)
    good = rec.of("assist.suggestion")[0]
    retriever.error = RuntimeError("faiss replica gone")
    await pipeline.handle(state, ChatMessage(text="can I pay my balance in installments"), rec)
    cached = rec.of("assist.suggestion")[1]
    assert cached["fallback"] == "cached_articles"
    assert cached["articles"] == good["articles"]


async def test_kb_failure_with_empty_cache_reports_error_and_continues(env):
    build, _, _ = env
    pipeline, rec = build(retriever=Failing(None, error=RuntimeError("down"))), Recorder()
    state = await start(pipeline, rec)
    await pipeline.handle(state, ChatMessage(text="I want to speak to a supervisor"), rec)
    assert [e["code"] for e in rec.of("error")] == ["stage_failed"]
    assert rec.of("escalation"), "escalation still runs after assist failed"


async def test_planner_falls_back_to_keyword_routing(env):
    build, _, _ = env
    pipeline, rec = build(intent=Failing(None, error=RuntimeError("down"))), Recorder()
    state = await start(pipeline, rec)
    await pipeline.handle(state, ChatMessage(text="I need a refill of my prescription"), rec)
    intent = rec.of("intent")[0]
    assert intent["model"] == "keywords" and intent["intent"] == "prescription"


async def test_low_confidence_hands_off_to_human_agent(env):
    build, _, _ = env
    pipeline, rec = build(), Recorder()
    pipeline.planner.threshold = 1.01  # nothing can clear it
    state = await start(pipeline, rec)
    await pipeline.handle(state, ChatMessage(text="I need to reschedule my appointment"), rec)
    intent = rec.of("intent")[0]
    assert intent["intent"] == "human_agent" and intent["predicted"] == "appointment"


async def test_escalations_fire_and_are_stored(env):
    build, store, _ = env
    pipeline, rec = build(), Recorder()
    state = await start(pipeline, rec)
    await pipeline.handle(
        state, ChatMessage(text="This is the third time I'm calling, it's ridiculous."), rec
    )
    await pipeline.handle(state, ChatMessage(text="Still waiting, nobody called back, unacceptable!"), rec)
    await pipeline.handle(state, ChatMessage(text="I'm going to call my lawyer."), rec)
    escalations = rec.of("escalation")
    assert [e["rule"] for e in escalations] == ["sustained_negative_sentiment", "legal_threat"]
    legal = escalations[1]
    assert legal["queue"] == "supervisor" and "legal_liaison has no one available" in legal["reason"]
    await store.flush()
    with store.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("select rule, queue from escalations order by id")).fetchall()
    assert [tuple(r) for r in rows] == [
        ("sustained_negative_sentiment", "supervisor"),
        ("legal_threat", "supervisor"),
    ]


async def test_agent_turns_are_stored_but_not_analysed(env):
    build, store, _ = env
    pipeline, rec = build(), Recorder()
    state = await start(pipeline, rec)
    await pipeline.handle(state, ChatMessage(text="Let me check that for you, Maria.", speaker="agent"), rec)
    assert [e["type"] for e in rec.events] == ["session.started", "transcript.final", "redaction"]
    assert rec.events[1]["speaker"] == "agent" and "Maria" not in rec.events[1]["text"]


async def test_feedback_is_validated_redacted_and_stored(env):
    build, store, _ = env
    pipeline, rec = build(), Recorder()
    state = await start(pipeline, rec)
    with pytest.raises(ProtocolError) as err:
        await pipeline.handle(state, SuggestionFeedback(suggestion_id="sug_nope", action="accepted"), rec)
    assert err.value.code == "unknown_suggestion"
    await pipeline.handle(state, ChatMessage(text="how do I reset my portal password"), rec)
    sid = rec.of("assist.suggestion")[0]["suggestion_id"]
    await pipeline.handle(
        state,
        SuggestionFeedback(
            suggestion_id=sid, action="edited", final_text="Sure, I emailed j.doe@example.com a link"
        ),
        rec,
    )
    stored = await store.session_events("demo", state.session_id)
    feedback = [e for e in stored if e["type"] == "suggestion.feedback"]
    assert feedback and "[EMAIL]" in feedback[0]["final_text"] and "j.doe@example.com" not in str(stored)


async def test_resume_continues_the_same_session_and_is_tenant_scoped(env):
    build, store, _ = env
    pipeline, rec = build(), Recorder()
    state = await start(pipeline, rec)
    await pipeline.handle(state, ChatMessage(text="hello there"), rec)
    await pipeline.end_session(state, rec, status="disconnected")
    resumed, started = await pipeline.start_session(
        "demo", SessionStart(channel="chat", customer_id="c-1", session_id=state.session_id)
    )
    assert started.resumed and resumed.seq == state.seq + 1  # the resume's own session.started is logged
    assert resumed.suggestions == state.suggestions and resumed.turns == 1
    with pytest.raises(ProtocolError) as err:
        await pipeline.start_session(
            "other-tenant", SessionStart(channel="chat", customer_id="x", session_id=state.session_id)
        )
    assert err.value.code == "session_not_found"
    await pipeline.handle(resumed, ChatMessage(text="back again"), rec)
    transcript = await store.transcript("demo", state.session_id)
    assert [u["text"] for u in transcript] == ["hello there", "back again"]
    seqs = [e["seq"] for e in (await _event_rows(store, state.session_id))]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), "event log order survives a resume"


async def _event_rows(store, session_id):
    await store.flush()
    with store.engine.connect() as conn:
        return (
            conn.execute(
                sqlalchemy.text("select seq from events where session_id = :s order by id"), {"s": session_id}
            )
            .mappings()
            .all()
        )


async def test_transcript_is_durable_before_session_ended_is_sent(env):
    build, store, _ = env
    pipeline = build()
    seen_backlog = []

    async def emit(event) -> None:
        if event.type == "session.ended":
            seen_backlog.append(store.backlog)

    state, _ = await pipeline.start_session("demo", SessionStart(channel="chat", customer_id="c"))
    await pipeline.handle(state, ChatMessage(text="please cancel my membership"), emit)
    await pipeline.end_session(state, emit)
    assert seen_backlog == [0]


async def test_session_end_scores_the_call_and_stores_it(env):
    build, store, _ = env
    pipeline, rec = build(), Recorder()
    state = await start(pipeline, rec)
    assert rec.events[0]["variant"] == "champion"
    await pipeline.handle(state, ChatMessage(text="I was charged twice, this is ridiculous"), rec)
    await pipeline.handle(state, ChatMessage(text="oh I see, great, thanks, that fixed it"), rec)
    suggestion = rec.of("assist.suggestion")[0]
    await pipeline.handle(
        state, SuggestionFeedback(suggestion_id=suggestion["suggestion_id"], action="accepted"), rec
    )
    ended = await pipeline.end_session(state, rec)
    quality = ended.summary["quality"]
    assert quality["resolved"] is True and quality["suggestions"] == {
        "sent": 2,
        "accepted": 1,
        "edited": 0,
        "rejected": 0,
        "acceptance_rate": 1.0,
    }
    assert quality["sentiment_trend"] > 0 and 0 <= quality["score"] <= 100
    assert rec.of("session.ended")[0]["summary"]["quality"] == quality
    rows = await store.session_analytics("demo", state.session_id)
    assert [r["quality_score"] for r in rows] == [quality["score"]]
    assert rows[0]["customer_id"] == "c-1" and rows[0]["variant"] == "champion"
    assert await store.session_analytics("other-tenant", state.session_id) == []
    for event in rec.of("sentiment") + rec.of("intent"):
        assert event["variant"] and event["model"]


async def test_feature_store_outage_does_not_block_session_end(env):
    build, _, _ = env

    class DownFeatureStore:
        async def online(self, tenant, customer_id):
            return None

        async def push_session_async(self, tenant, customer_id, **kw):
            raise ConnectionError("redis down")

    pipeline = build()
    pipeline.features = DownFeatureStore()
    rec = Recorder()
    state, _ = await pipeline.start_session("demo", SessionStart(channel="chat", customer_id="c-2"))
    assert await state.customer_features() is None
    ended = await pipeline.end_session(state, rec)
    assert ended.summary["quality"]["score"] >= 0 and rec.of("session.ended")
