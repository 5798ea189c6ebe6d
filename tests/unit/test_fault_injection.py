"""Fault injection in-process, one test per failure-table row of DESIGN.md that needs no cluster: the real
pipeline, real models and a real store; fakes (``tests/fakes.py``) only wrap a real port to inject the fault.

Every test ends with the same "nothing lost" check (``assert_nothing_lost``): every event the client got is in
the durable session log, in order, and nothing else is; the stored transcript is exactly the transcript the
client saw; every accepted message has its ``transcript.final``. The rows that need PostgreSQL or a killed Serve
replica live in ``tests/integration/test_fault_injection.py`` (its docstring has the whole table).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import sqlalchemy

from models.asr.base import AsrCapabilities, AsrError, Transcription
from models.asr.metrics import wer
from models.text.sentiment import LexiconSentiment
from pipelines.events import ChatMessage, SessionStart
from pipelines.ports import ModelPorts
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.session import Pipeline, SessionState
from pipelines.storage import SessionStore, metadata
from tests.fakes import Failing, FaultyGenerator, Recorder, ScriptedGenerator

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("no_leaked_tasks")]


# ---------------------------------------------------------------- harness


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

    def build(settings_overrides: dict | None = None, **port_overrides) -> Pipeline:
        s = settings.model_copy(update=settings_overrides or {})
        return Pipeline(ports(local_models, **port_overrides), store, review, s)

    yield build, store, review
    await store.close()


async def start(pipeline: Pipeline, rec: Recorder, channel: str = "chat") -> SessionState:
    state, started = await pipeline.start_session(
        "demo", SessionStart(channel=channel, customer_id="c-fault")
    )
    await rec(started)
    return state


async def say(
    pipeline: Pipeline, state: SessionState, rec: Recorder, text: str, message_id: str
) -> list[dict]:
    """One customer message; returns the events it produced."""
    before = len(rec.events)
    await pipeline.handle(state, ChatMessage(text=text, message_id=message_id), rec)
    return rec.events[before:]


async def assert_nothing_lost(
    store: SessionStore, state: SessionState, rec: Recorder, message_ids: list[str] = ()
) -> list[dict]:
    """The durable session log is exactly what the client was sent (partials are previews and never stored);
    the stored transcript is exactly the client's; every accepted message has its final. Returns the log."""
    await asyncio.wait_for(store.flush(), 30)
    log = await store.session_events(state.tenant, state.session_id)
    sent = [e for e in rec.events if e["type"] != "transcript.partial"]
    assert [e["type"] for e in log] == [e["type"] for e in sent]
    assert log == sent, "the stored session log differs from what the client received"
    finals = [e for e in sent if e["type"] == "transcript.final"]
    transcript = await store.transcript(state.tenant, state.session_id)
    assert [(u["id"], u["text"]) for u in transcript] == [(f["utterance_id"], f["text"]) for f in finals]
    assert set(message_ids) <= {f.get("message_id") for f in finals}, "an accepted message has no final"
    return log


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


# ---------------------------------------------------------------- ASR down: backup ASR, buffered audio replayed


class SwitchableEngine:
    """A real ASR engine with a fault switch: while ``down`` every call raises AsrError (its process died)."""

    def __init__(self, inner, name: str = "primary") -> None:
        self.inner, self.name = inner, name
        self.capabilities = AsrCapabilities(
            streaming=inner.capabilities.streaming,
            word_timestamps=inner.capabilities.word_timestamps,
            batching=inner.capabilities.batching,
        )
        self.down = False
        self.failures = 0

    def transcribe(self, audio, *, prompt=None) -> Transcription:
        if self.down:
            self.failures += 1
            raise AsrError("injected: primary ASR process died")
        return self.inner.transcribe(audio, prompt=prompt)

    def transcribe_batch(self, audios) -> list[Transcription]:
        if self.down:
            self.failures += 1
            raise AsrError("injected: primary ASR process died")
        return self.inner.transcribe_batch(audios)


@pytest.fixture(scope="module")
def voice_models(index_dir):
    from models.asr.vad import SileroVad
    from pipelines.backends import LocalSpeakers, build_asr, build_speaker_embedder
    from pipelines.config import Settings

    s = Settings(data_dir=index_dir.parent, index_dir=index_dir)
    return {"vad": SileroVad(), "engines": build_asr(s), "speakers": LocalSpeakers(build_speaker_embedder(s))}


@pytest.mark.slow
async def test_asr_down_backup_then_outage_replayed_nothing_lost(env, voice_models):
    """The primary ASR engine dies when the second turn starts (the backup engine answers from then on); the
    whole ASR service goes down when the third turn starts, for 3 s (audio kept, one retryable
    ``asr_unavailable``), then recovers: the buffered segments are replayed and the transcript of the whole
    call is complete."""
    from models.asr.fallback import FallbackAsr
    from pipelines.audio import AudioDecoder
    from pipelines.backends import LocalAsr
    from pipelines.samples import DEMO_CALL, two_speaker_call
    from pipelines.voice import VoiceSession

    call = two_speaker_call(DEMO_CALL[:4])
    engines = voice_models["engines"]
    real = engines["final"].engines[0]
    primary = SwitchableEngine(real)
    chain = FallbackAsr([primary, real], retries=1, backoff_s=0.01)  # the backup: the real engine itself
    service = Failing(LocalAsr({"final": chain, "partial": engines["partial"]}))  # the ASR service
    outage_s = 3.0

    async def recover() -> None:
        await asyncio.sleep(outage_s)
        service.error = None

    build, store, _ = env
    pipeline, rec = build(), Recorder()
    state = await start(pipeline, rec, channel="voice")
    voice = VoiceSession(
        pipeline,
        state,
        rec,
        AudioDecoder("pcm_s16le", 16000, 1),
        voice_models["vad"],
        service,
        voice_models["speakers"],
        pipeline.settings,
    )
    pcm, frame = call.pcm16(), 640
    primary_dies, service_dies = (int(t.start * 16000) * 2 for t in call.turns[1:3])
    recovery = None
    for i in range(0, len(pcm), frame):
        if i >= primary_dies:
            primary.down = True
        if i >= service_dies and recovery is None:
            service.error = AsrError("injected: ASR service down")
            recovery = asyncio.ensure_future(recover())
        await voice.feed(pcm[i : i + frame])
        if i % (frame * 25) == 0:
            await asyncio.sleep(0.01)  # let finals run while the audio keeps coming
    await voice.close()
    await recovery
    await pipeline.end_session(state, rec)

    finals = rec.of("transcript.final")
    assert primary.failures > 0 and chain.stats[real.name].successes > 0, "the backup engine answered"
    errors = rec.of("error")
    assert [e["code"] for e in errors] == ["asr_unavailable"] and errors[0]["retryable"] is True
    replayed = [f for f in finals if f["utterance_id"] == errors[0]["utterance_id"]]
    assert replayed, "the segment that hit the outage was transcribed after recovery"
    assert replayed[0]["latency_ms"] >= outage_s * 1000 * 0.5, "its final came after the outage, not before"
    hyp = " ".join(f["text"] for f in finals)
    assert wer(" ".join(t.text for t in call.turns), hyp) <= 0.15, hyp
    assert [f["start"] for f in finals] == sorted(f["start"] for f in finals)
    log = await assert_nothing_lost(store, state, rec)
    assert "asr_unavailable" in [e.get("code") for e in log], "the error is in the session log too"
    print(
        f"\n[asr] {len(finals)} finals, WER {wer(' '.join(t.text for t in call.turns), hyp):.3f}, primary failed "
        f"{primary.failures}x, backup answered {chain.stats[real.name].successes}x, replayed final "
        f"{replayed[0]['latency_ms'] / 1000:.1f}s after its speech ended"
    )


# ---------------------------------------------------------------- LLM timeout: cached reply, then articles only


async def test_llm_timeout_cache_then_articles_and_the_session_keeps_going(env):
    """Complements tests/unit/test_generation_pipeline.py (real vLLM engine): here the same hang, injected
    around a scripted reply, checked for what those tests leave out: ``handle`` never waits for the reply, the
    next message runs meanwhile, and every suggestion (cache, then articles only) is in the stored log."""
    build, store, _ = env
    budget = 3.0
    pipeline = build({"generation_timeout_s": budget})
    question = "How do I reset my portal password?"
    rec = Recorder()
    state = await start(pipeline, rec)
    article = [
        e for e in await say(pipeline, state, rec, question, "m-0") if e["type"] == "assist.suggestion"
    ][0]
    # a grounded reply (the top article's own words) is written once and goes into the reply cache
    pipeline.writer.generator = ScriptedGenerator(article["text"], name="scripted@1")
    await say(pipeline, state, rec, question, "m-1")
    if state.generating:
        await asyncio.wait(set(state.generating))
    generated = rec.of("assist.suggestion")[-1]
    assert generated["source"] == "generated" and generated["final"] is True

    hang = FaultyGenerator(ScriptedGenerator(article["text"], name="scripted@1"), "hang", after=1)
    pipeline.writer.generator = hang
    t0 = time.perf_counter()
    similar = await say(pipeline, state, rec, "how do i reset my portal password", "m-2")
    other = await say(pipeline, state, rec, "Is my knee surgery covered by my insurance plan?", "m-3")
    assert time.perf_counter() - t0 < budget, "the messages were handled while the replies hung"
    assert "transcript.final" in types(similar) and "transcript.final" in types(other)
    await pipeline.end_session(state, rec)
    assert hang.calls == 2
    finals = {e["suggestion_id"]: e for e in rec.of("assist.suggestion") if e.get("final", True)}
    by_utterance = {e["utterance_id"]: e for e in finals.values()}
    cached = by_utterance[[e for e in similar if e["type"] == "transcript.final"][0]["utterance_id"]]
    plain = by_utterance[[e for e in other if e["type"] == "transcript.final"][0]["utterance_id"]]
    assert cached["source"] == "cache" and cached["fallback"] == "generation_timeout"
    assert cached["text"] == generated["text"]
    assert plain["source"] == "articles_only" and plain["fallback"] == "generation_timeout"
    first = [e for e in other if e["type"] == "assist.suggestion"][0]
    assert plain["text"] == first["text"] and plain["articles"] == first["articles"]
    assert not rec.of("error")
    summary = rec.of("session.ended")[0]["summary"]
    assert summary["assist"]["cache"] == 1 and summary["turns"] == 4
    await assert_nothing_lost(store, state, rec, ["m-0", "m-1", "m-2", "m-3"])


# ---------------------------------------------------------------- sentiment model fails: rules, then neutral


async def test_sentiment_model_fails_rules_then_neutral(env, local_models, monkeypatch):
    sentiment = Failing(local_models.sentiment)
    build, store, _ = env
    pipeline, rec = build(sentiment=sentiment), Recorder()
    state = await start(pipeline, rec)
    healthy = await say(pipeline, state, rec, "Thank you, that really helps.", "m-0")
    model = [e for e in healthy if e["type"] == "sentiment"][0]["model"]

    sentiment.error = RuntimeError("injected: CUDA error, device-side assert")
    rules = await say(pipeline, state, rec, "This is ridiculous, nobody ever calls me back.", "m-1")
    s = [e for e in rules if e["type"] == "sentiment"][0]
    assert s["model"] == "rules:fallback" and s["label"] == "negative"

    def broken(self, text):
        raise RuntimeError("injected: the lexicon failed to load")

    monkeypatch.setattr(LexiconSentiment, "score", broken)  # the rule scorer fails too
    neutral = await say(pipeline, state, rec, "This is ridiculous, I am furious.", "m-2")
    s = [e for e in neutral if e["type"] == "sentiment"][0]
    assert (s["model"], s["label"], s["score"]) == ("neutral:fallback", "neutral", 0.0)

    monkeypatch.undo()
    sentiment.error = None
    back = await say(pipeline, state, rec, "Great, thanks for sorting that out.", "m-3")
    assert [e for e in back if e["type"] == "sentiment"][0]["model"] == model
    for turn in (healthy, rules, neutral, back):  # the rest of every turn ran
        assert {"transcript.final", "sentiment", "intent", "assist.suggestion"} <= set(types(turn))
    assert sentiment.calls == 4 and not rec.of("error")  # fallbacks are silent: the event names its model
    await pipeline.end_session(state, rec)
    assert rec.of("session.ended")[0]["summary"]["turns"] == 4
    await assert_nothing_lost(store, state, rec, ["m-0", "m-1", "m-2", "m-3"])


# ---------------------------------------------------------------- PII detection fails: blocked, manual review

RAW = "I'm Maria Gonzalez, my SSN is 123-45-6789 and my card is 4111 1111 1111 1111"
SECRETS = ("Maria", "Gonzalez", "123-45-6789", "4111 1111 1111 1111")


@pytest.mark.parametrize("fault", ["error", "hang"])
async def test_pii_detection_fails_blocked_for_review_nothing_unredacted(env, local_models, fault):
    guardrail = Failing(local_models.guardrail)
    downstream = {
        n: Failing(getattr(local_models, n)) for n in ("sentiment", "embedder", "intent", "retriever")
    }
    build, store, review = env
    pipeline, rec = build(guardrail=guardrail, **downstream), Recorder()
    pipeline.guardrail.timeout_s = 1.0
    state = await start(pipeline, rec)
    await say(pipeline, state, rec, "I have a question about my bill", "m-0")
    calls = {n: p.calls for n, p in downstream.items()}

    if fault == "error":
        guardrail.error = RuntimeError("injected: NER engine down")
    else:
        guardrail.delay = 5.0  # detection hangs past the stage budget
    blocked = await say(pipeline, state, rec, RAW, "m-1")
    assert types(blocked) == ["error"]
    error = blocked[0]
    assert error["code"] == "pii_check_failed" and error["retryable"] is True and error["utterance_id"]
    assert {n: p.calls for n, p in downstream.items()} == calls, "no other model saw the unchecked text"

    guardrail.error, guardrail.delay = None, 0.0  # detection is back: the customer resends
    resent = await say(pipeline, state, rec, RAW, "m-2")
    assert {"transcript.final", "redaction", "sentiment", "assist.suggestion"} <= set(types(resent))
    await pipeline.end_session(state, rec)

    wire = str(rec.events)
    assert not [s for s in SECRETS if s in wire], "un-redacted text was sent"
    await store.flush()
    with store.engine.connect() as conn:
        items = conn.execute(sqlalchemy.text("select * from review_items")).mappings().all()
        dump = " ".join(str(conn.execute(t.select()).fetchall()) for t in metadata.sorted_tables)
    assert not [s for s in SECRETS if s in dump], "un-redacted text was stored"
    assert len(items) == 1 and items[0]["utterance_id"] == error["utterance_id"]
    assert items[0]["status"] == "pending" and items[0]["reason"].startswith("pii_detection:")
    held = review.decrypt(
        tenant="demo",
        session_id=state.session_id,
        utterance_id=items[0]["utterance_id"],
        nonce=items[0]["nonce"],
        ciphertext=items[0]["ciphertext"],
    )
    assert held == RAW, "the blocked message is kept, encrypted, for the reviewer"
    log = await assert_nothing_lost(store, state, rec, ["m-0", "m-2"])
    assert error in log


# ---------------------------------------------------------------- KB search fails: cached top articles


async def test_kb_search_fails_cached_articles_for_the_same_intent(env, local_models):
    retriever = Failing(local_models.retriever)
    build, store, _ = env
    pipeline, rec = build(retriever=retriever), Recorder()
    state = await start(pipeline, rec)

    def of(events: list[dict], type_: str) -> dict:
        return [e for e in events if e["type"] == type_][0]

    billing = await say(
        pipeline, state, rec, "I was charged twice on my last bill, can I get a refund?", "m-0"
    )
    booking = await say(pipeline, state, rec, "I need to reschedule my appointment to next week", "m-1")
    assert of(billing, "intent")["intent"] != of(booking, "intent")["intent"]

    retriever.error = ConnectionError("injected: knowledge base replica gone")
    calls = retriever.calls
    again = await say(pipeline, state, rec, "Why is there a duplicate charge on my billing statement?", "m-2")
    assert retriever.calls == calls + 1, "the search was tried and failed"
    assert of(again, "intent")["intent"] == of(billing, "intent")["intent"]
    cached = of(again, "assist.suggestion")
    assert cached["fallback"] == "cached_articles"
    # the cached articles are the same intent's, not the most recent (appointment) ones
    assert cached["articles"] == of(billing, "assist.suggestion")["articles"]
    assert cached["articles"] != of(booking, "assist.suggestion")["articles"]
    assert "reranker" not in cached, "no reranking: the reranker sits behind the search that failed"
    assert not rec.of("error")

    retriever.error = None
    fresh = of(
        await say(pipeline, state, rec, "Can I set up a payment plan for my bill?", "m-3"),
        "assist.suggestion",
    )
    assert "fallback" not in fresh and fresh["articles"]
    await pipeline.end_session(state, rec)
    await assert_nothing_lost(store, state, rec, ["m-0", "m-1", "m-2", "m-3"])


def test_fault_wrappers_pass_through_when_healthy():
    """The wrappers above inject only while switched on (guards against a fake that changes behaviour)."""
    inner = type("Engine", (), {"capabilities": AsrCapabilities(), "name": "x"})()
    inner.transcribe = lambda audio, prompt=None: Transcription(text="ok", model="x")
    inner.transcribe_batch = lambda audios: [Transcription(text="ok", model="x") for _ in audios]
    engine = SwitchableEngine(inner)
    assert engine.transcribe(np.zeros(10)).text == "ok"
    engine.down = True
    with pytest.raises(AsrError):
        engine.transcribe_batch([np.zeros(10)])
