"""Generated suggestions in the session pipeline, in-process: the real vLLM engine (CPU build) with the packaged
SmolLM2, the real guardrail, embedder and retriever; faults injected around the real engine (it dies mid-reply,
it hangs) and scripted replies for what a real small model does not produce on demand (an invented fact,
personal data in its output)."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio

from pipelines.events import ChatMessage, SessionStart, SuggestionFeedback
from pipelines.metrics import snapshot
from pipelines.overload import LoadGovernor
from pipelines.ports import ModelPorts
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.session import Pipeline
from pipelines.storage import SessionStore
from tests.fakes import FaultyGenerator, Recorder, ScriptedGenerator

pytestmark = [pytest.mark.unit, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

QUESTION = "Can I set up a payment plan for my hospital bill?"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(smollm2_dir):
    """One real vLLM engine for the module (it starts in ~30 s)."""
    from models.generation.vllm_engine import VllmGenerator

    generator = VllmGenerator(smollm2_dir, name="smollm2@test")
    yield generator
    await generator.close()


@pytest_asyncio.fixture(loop_scope="module")
async def build(settings, local_models):
    store = SessionStore(settings.sqlalchemy_url)
    await store.start()
    review = ReviewQueue(store, load_or_create_key(settings.resolved_review_key_file))

    def make(generator, **overrides) -> Pipeline:
        ports = ModelPorts(
            guardrail=local_models.guardrail,
            sentiment=local_models.sentiment,
            embedder=local_models.embedder,
            intent=local_models.intent,
            retriever=local_models.retriever,
            generator=generator,
        )
        return Pipeline(
            ports, store, review, settings.model_copy(update=overrides), provider="Maple Ridge Health"
        )

    yield make
    await store.close()


async def turn(pipeline: Pipeline, text: str, customer: str = "c-gen"):
    rec = Recorder()
    state, started = await pipeline.start_session("demo", SessionStart(channel="chat", customer_id=customer))
    await rec(started)
    await pipeline.handle(state, ChatMessage(text=text), rec)
    return state, rec


async def finish(pipeline: Pipeline, state, rec: Recorder) -> dict:
    await pipeline.end_session(state, rec)
    return rec.of("session.ended")[0]


async def test_the_real_engine_streams_after_the_articles_and_its_reply_is_checked(build, engine):
    pipeline = build(engine)
    state, rec = await turn(pipeline, QUESTION)
    assert state.generating, "the reply is written in the background: handle() returned before it"
    ended = await finish(pipeline, state, rec)
    first, final = rec.of("assist.suggestion")
    deltas = rec.of("assist.delta")
    assert (
        first["final"] is False
        and final["final"] is True
        and final["suggestion_id"] == first["suggestion_id"]
    )
    assert deltas and [d["index"] for d in deltas] == list(range(len(deltas)))
    assert final["model"] == "smollm2@test" and final["tokens"]["completion"] > 0
    assert final["source"] in ("generated", "articles_only")
    if final["source"] == "generated":
        assert final["grounding"]["grounded"] and set(final["citations"]) <= {
            a["id"] for a in first["articles"]
        }
    else:
        assert final["fallback"] == "ungrounded" and final["text"] == first["text"]
    assert ended["summary"]["assist"]["tokens"] == final["tokens"]["prompt"] + final["tokens"]["completion"]
    types = [e["type"] for e in rec.events]
    assert types.index("assist.suggestion") < types.index("assist.delta") < types.index("session.ended")


async def test_engine_dying_mid_reply_falls_back_to_the_articles(build, engine):
    pipeline = build(FaultyGenerator(engine, "raise", after=2))
    state, rec = await turn(pipeline, QUESTION)
    await finish(pipeline, state, rec)
    first, final = rec.of("assist.suggestion")
    assert final["source"] == "articles_only" and final["fallback"] == "generation_error"
    assert final["text"] == first["text"] and final["articles"] == first["articles"]
    assert len(rec.of("assist.delta")) <= 2  # what streamed before the failure, nothing after


async def test_engine_hang_is_cut_at_the_budget_and_a_cached_similar_reply_stands_in(build, engine):
    pipeline = build(None, generation_timeout_s=3.0)
    state, rec = await turn(pipeline, "How do I reset my portal password?")
    article = rec.of("assist.suggestion")[0]
    # a good reply for this question, written from the top article's own words, goes into the cache
    pipeline.writer.generator = ScriptedGenerator(article["text"], name="scripted@1")
    await pipeline.handle(state, ChatMessage(text="How do I reset my portal password?"), rec)
    await finish(pipeline, state, rec)
    generated = rec.of("assist.suggestion")[-1]
    assert generated["source"] == "generated" and generated["model"] == "scripted@1"

    pipeline.writer.generator = FaultyGenerator(engine, "hang", after=1)
    state, rec = await turn(pipeline, "how do i reset my portal password")
    started = asyncio.get_running_loop().time()
    await finish(pipeline, state, rec)
    assert asyncio.get_running_loop().time() - started < 3.0 + 2.0
    first, final = rec.of("assist.suggestion")
    assert final["source"] == "cache" and final["fallback"] == "generation_timeout"
    assert final["text"] == generated["text"] and final["citations"] == generated["citations"]
    assert pipeline.writer.cache.hits == 1 and pipeline.writer.cache.hit_rate > 0


async def test_engine_hang_without_a_cached_reply_leaves_the_articles(build, engine):
    pipeline = build(FaultyGenerator(engine, "hang", after=0), generation_timeout_s=2.0)
    state, rec = await turn(pipeline, "Is my knee surgery approved by my insurance yet?")
    await finish(pipeline, state, rec)
    first, final = rec.of("assist.suggestion")
    assert final["source"] == "articles_only" and final["fallback"] == "generation_timeout"
    assert final["text"] == first["text"]


async def test_an_invented_fact_is_rejected_and_the_articles_stand(build):
    pipeline = build(
        ScriptedGenerator("Yes, you can pay $999 a month through PayPal with no interest at all.")
    )
    state, rec = await turn(pipeline, QUESTION)
    await finish(pipeline, state, rec)
    first, final = rec.of("assist.suggestion")
    assert final["source"] == "articles_only" and final["fallback"] == "ungrounded"
    assert "999" in final["grounding"]["reason"] and final["grounding"]["grounded"] is False
    assert final["text"] == first["text"] and "PayPal" not in final["text"]


async def test_personal_data_in_generated_text_never_reaches_the_wire(build):
    raw = ["John Smith", "415-555-0100", "john.smith@example.com"]
    pipeline = build(
        ScriptedGenerator(
            "Please call John Smith at 415-555-0100, or email john.smith@example.com, about your payment plan."
        )
    )
    state, rec = await turn(pipeline, QUESTION)
    await finish(pipeline, state, rec)
    assert rec.of("assist.delta")
    wire = json.dumps(rec.events)
    for value in raw:
        assert value not in wire


async def test_session_token_limit_turns_generation_off(build):
    pipeline = build(
        ScriptedGenerator("Payment plans are interest-free for balances of $100 or more."),
        generation_session_token_limit=100,  # the scripted reply costs 100 + 10
    )
    state, rec = await turn(pipeline, QUESTION)
    await asyncio.wait(set(state.generating))  # the limit counts tokens already spent
    await pipeline.handle(state, ChatMessage(text="And what if I miss a payment?"), rec)
    ended = await finish(pipeline, state, rec)
    suggestions = rec.of("assist.suggestion")
    assert [s.get("final", True) for s in suggestions] == [False, True, True]  # the second turn: articles only, at once
    assert ended["summary"]["assist"]["tokens"] == 110  # 100 prompt + 10 words


async def test_feedback_is_stored_and_counted_per_model(build):
    pipeline = build(
        ScriptedGenerator(
            "Maple Ridge Health offers interest-free payment plans for balances of $100 or more."
        )
    )
    state, rec = await turn(pipeline, QUESTION)
    await asyncio.wait(set(state.generating))
    final = rec.of("assist.suggestion")[-1]
    assert final["source"] == "generated"
    before = snapshot().get(
        "switchboard_suggestion_feedback{action=accepted,model=scripted@1,source=generated}", 0
    )
    await pipeline.handle(
        state, SuggestionFeedback(suggestion_id=final["suggestion_id"], action="accepted"), rec
    )
    await finish(pipeline, state, rec)
    after = snapshot()["switchboard_suggestion_feedback{action=accepted,model=scripted@1,source=generated}"]
    assert after == before + 1
    rows = await pipeline.store.session_events(state.tenant, state.session_id)
    feedback = [r for r in rows if r["type"] == "suggestion.feedback"]
    assert feedback == [
        {
            "type": "suggestion.feedback",
            "suggestion_id": final["suggestion_id"],
            "action": "accepted",
            "source": "generated",
            "model": "scripted@1",
        }
    ]


async def test_under_overload_generation_is_shed_and_the_articles_are_final_at_once(build):
    pipeline = build(
        ScriptedGenerator("Payment plans are interest-free for balances of $100 or more."),
        shed_inflight_turns=1,  # every turn in flight counts as a replica at its threshold
    )
    key = "switchboard_shed{channel=chat,stage=generation,tenant=demo}"
    before = snapshot().get(key, 0)
    state, rec = await turn(pipeline, QUESTION)
    assert not state.generating, "nothing is generated for a shed turn"
    ended = await finish(pipeline, state, rec)
    (suggestion,) = rec.of("assist.suggestion")
    assert suggestion["source"] == "articles_only" and suggestion["fallback"] == "shed"
    assert suggestion.get("final", True) is not False and suggestion["articles"]
    assert not rec.of("assist.delta")
    assert snapshot()[key] == before + 1
    cost = ended["summary"]["cost"]
    assert cost["tokens"] == 0 and cost["stage_calls"] >= 4  # guardrail, sentiment, planner, assist, escalation
    # the load is gone: the next session's turn is generated again
    pipeline.governor = LoadGovernor()  # a replica with room (the defaults)
    state, rec = await turn(pipeline, QUESTION, customer="c-gen-2")
    await finish(pipeline, state, rec)
    assert [s["source"] for s in rec.of("assist.suggestion")] == ["articles_only", "generated"]
