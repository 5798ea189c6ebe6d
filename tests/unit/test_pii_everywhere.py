"""PII everywhere (issue 8): the guardrail runs before storage and before any model prompt on every text path.

The whole PII corpus (tests/data/pii_corpus.yaml) is sent, in-process and with the real models, through every
way text enters a session: a chat session (customer and agent messages, suggestion feedback whose edited
``final_text`` carries PII), an SMS thread and an e-mail thread through ``ChannelInbox`` (agent replies go out
through the local outbox), and voice finals as ``pipelines/voice.py`` hands them over
(``Pipeline.finalize_utterance`` with the ASR's word timings, then ``Pipeline.analyse``; partials through
``Pipeline.redact_partial``). The generator records every prompt it is given and answers with personal data of
its own. Then no raw value may appear in any emitted event, any row of any table of the SQLite store, any log
record (DEBUG and up, every logger), any prompt, or the outbox file.

gRPC needs no run of its own, and no Ray: ``Stream`` in serve/grpc_api.py runs the same ``SessionConnection``
(serve/connection.py) as the websocket, which calls ``Pipeline.start_session`` / ``Pipeline.handle`` and the voice
session exactly as below; the agent desktop's messages (``WatchConnection``) are agent ``ChatMessage``s as below.
Raw values with fewer than 6 letters or digits are not looked for (see ``needles``): test_pii.py measures those.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from itertools import zip_longest
from pathlib import Path

import pytest
import sqlalchemy

import pipelines
from models.asr.base import Word
from pipelines.channels import OutboxSender, parse_email
from pipelines.channels.inbox import ChannelInbox
from pipelines.channels.sms import InboundSms
from pipelines.events import ChatMessage, SessionStart, SuggestionFeedback, TranscriptPartial
from pipelines.live import LiveHub
from pipelines.ports import ModelPorts
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.session import Pipeline
from pipelines.storage import SessionStore
from tests.fakes import Recorder, ScriptedGenerator
from tests.unit.test_pii import CORPUS

pytestmark = [pytest.mark.unit, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_tasks")]

SECRET = "test-channel-secret"
SMS_FROM = "+13125550188"  # the customer's own number and address: memory only (outbox "to"), never stored
EMAIL_FROM = "kayla.brooks77@example.net"
# What the model "writes": personal data of its own, which the guardrail must catch on the way out too.
REPLY = "Sure, I will call 212-555-0147 and email robert.chen@northwind-traders.com about card 4111 1111 1111 1111."

# Every corpus case goes through exactly one path: six slices of the corpus.
PATHS = ("chat_customer", "chat_agent", "feedback", "sms", "email", "voice")
SLICES = {path: [text for text, _ in CORPUS[i :: len(PATHS)]] for i, path in enumerate(PATHS)}


KB_TEXT = "\n".join(
    p.read_text(encoding="utf-8") for p in sorted((Path(pipelines.__file__).parent / "kb").glob("*.yaml"))
)


def needles() -> dict[str, str]:
    """Raw values to look for -> what they are. Values with fewer than 6 letters or digits ("6789", "Tom") are
    left out: they occur by chance in ids, hashes and times; so are the organisation's own numbers that the
    knowledge base publishes (its articles are in suggestions and prompts by design). Each value is also looked
    for as JSON writes it (non-ASCII escaped) and, with 9 digits or more, as its bare digits."""
    out: dict[str, str] = {}
    values = [(raw, etype) for _, items in CORPUS for raw, etype in items]
    values += [
        ("212-555-0147", "PHONE"),
        ("robert.chen@northwind-traders.com", "EMAIL"),
        ("4111 1111 1111 1111", "CARD"),
    ]
    values += [(SMS_FROM, "sms sender"), (SMS_FROM[2:], "sms sender"), (EMAIL_FROM, "email sender")]
    for raw, what in values:
        if sum(ch.isalnum() for ch in raw) < 6 or raw in KB_TEXT:
            continue
        out[raw] = what
        out[json.dumps(raw)[1:-1]] = what
        digits = re.sub(r"\D", "", raw)
        if len(digits) >= 9 and any(not ch.isdigit() for ch in raw):
            out[digits] = what
    return out


NEEDLES = needles()


def leaks(where: str, haystacks: Iterable[str]) -> list[str]:
    found = []
    for hay in haystacks:
        for needle, what in NEEDLES.items():
            if needle in hay:
                i = hay.index(needle)
                found.append(
                    f"{where}: {what} {needle!r} in ...{hay[max(0, i - 60) : i + len(needle) + 60]!r}..."
                )
    return found


class RecordingGenerator(ScriptedGenerator):
    """The scripted generator, keeping every request (the prompt exactly as the model gets it)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, name="recording@1")
        self.requests: list = []

    async def stream(self, request):
        self.requests.append(request)
        async for chunk in super().stream(request):
            yield chunk


def email(n: int, body: str, subject: str = "Question about my account") -> bytes:
    thread = "" if n == 0 else "In-Reply-To: <t0@example.net>\nReferences: <t0@example.net>\n"
    return (
        f"From: Kayla Brooks <{EMAIL_FROM}>\nTo: help@clinic.example\nSubject: {subject}\n"
        f"Message-ID: <t{n}@example.net>\n{thread}Content-Type: text/plain; charset=utf-8\n\n{body}\n"
    ).encode()


def dump(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """Every row of every table of the store, and every captured log record, as text."""
    rows: list[str] = []
    tables = sqlalchemy.MetaData()
    tables.reflect(pipeline.store.engine)
    with pipeline.store.engine.connect() as conn:
        for table in tables.sorted_tables:
            for row in conn.execute(table.select()):
                rows.append(
                    f"{table.name}: {tuple(row)!r} {json.dumps([str(v) for v in row], ensure_ascii=False)}"
                )
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return rows, [f"{formatter.format(r)} {vars(r)!r}" for r in caplog.records]


@pytest.fixture
async def world(settings, local_models, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # root: every logger propagates here
    caplog.set_level(logging.DEBUG, logger="switchboard")
    store = SessionStore(settings.sqlalchemy_url)
    await store.start()
    review = ReviewQueue(store, load_or_create_key(settings.resolved_review_key_file))
    generator = RecordingGenerator(REPLY)
    ports = ModelPorts(
        guardrail=local_models.guardrail,
        sentiment=local_models.sentiment,
        embedder=local_models.embedder,
        intent=local_models.intent,
        retriever=local_models.retriever,
        generator=generator,
    )
    pipeline = Pipeline(ports, store, review, settings, provider="Maple Ridge Health")
    hub = LiveHub()
    outbox = tmp_path / "outbox.jsonl"
    inbox = ChannelInbox(
        pipeline,
        hub,
        tenant="demo",
        secret=SECRET,
        sms_out=OutboxSender(outbox),
        email_out=OutboxSender(outbox),
    )
    yield pipeline, inbox, hub, generator, outbox
    await store.close()


async def test_no_raw_pii_in_events_rows_logs_prompts_or_outbox(world, caplog):
    pipeline, inbox, hub, generator, outbox = world
    events: list[dict] = []

    # ---- chat: customer messages, agent messages, feedback with an edited text
    rec = Recorder()
    state, started = await pipeline.start_session("demo", SessionStart(channel="chat", customer_id="c-pii"))
    await rec(started)
    agent_texts, feedback_texts = SLICES["chat_agent"], SLICES["feedback"]
    for customer, agent in zip_longest(SLICES["chat_customer"], agent_texts):
        if customer is not None:
            await pipeline.handle(state, ChatMessage(text=customer), rec)
        if agent is not None:
            await pipeline.handle(state, ChatMessage(text=agent, speaker="agent"), rec)
    suggestions = [e["suggestion_id"] for e in rec.of("assist.suggestion")]
    assert suggestions
    for i, text in enumerate(feedback_texts):
        fb = SuggestionFeedback(
            suggestion_id=suggestions[i % len(suggestions)], action="edited", final_text=text
        )
        await pipeline.handle(state, fb, rec)
    await pipeline.end_session(state, rec)
    events += rec.events

    # ---- SMS thread: the customer writes, the agent answers by SMS
    sms_texts = SLICES["sms"]
    sms_session = ""
    for i, text in enumerate(sms_texts):
        sms_session = await inbox.sms(InboundSms(f"SM{i}", SMS_FROM, "+18005550199", text))
    live = hub.get("demo", sms_session)
    for text in agent_texts[:5]:
        await pipeline.handle(live.state, ChatMessage(text=text, speaker="agent"), live.emit)

    # ---- e-mail thread (one thread by References), with an agent reply by e-mail
    email_texts = SLICES["email"]
    email_session = ""
    for i, text in enumerate(email_texts):
        email_session = await inbox.email(parse_email(email(i, text), max_bytes=1 << 20))
    assert {await inbox.email(parse_email(email(0, "one more thing"), max_bytes=1 << 20))} == {email_session}
    live = hub.get("demo", email_session)
    await pipeline.handle(live.state, ChatMessage(text=agent_texts[0], speaker="agent"), live.emit)
    for session_id in (sms_session, email_session):
        live = hub.get("demo", session_id)
        await pipeline.end_session(live.state, live.emit)
        events += list(live.log)
        events.append(live.summary())
        hub.close(live)

    # ---- voice: what pipelines/voice.py does with each final (and each partial) of the customer's channel
    rec = Recorder()
    state, started = await pipeline.start_session(
        "demo", SessionStart(channel="voice", customer_id="c-voice")
    )
    await rec(started)
    at = 0.0
    for i, text in enumerate(SLICES["voice"]):
        uid = f"utt_voice{i}"
        words = [Word(w, at + k * 0.3, at + k * 0.3 + 0.25, 0.9) for k, w in enumerate(text.split())]
        partial = await pipeline.redact_partial(" ".join(text.split()[: max(1, len(words) * 2 // 3)]))
        assert partial is not None
        await rec(TranscriptPartial(utterance_id=uid, text=partial, speaker="customer", start=at, end=at + 1))
        turn = await pipeline.finalize_utterance(
            state,
            rec,
            raw_text=text,
            speaker="customer",
            start=at,
            end=at + 0.3 * len(words),
            confidence=0.9,
            received_at=time.perf_counter(),
            utterance_id=uid,
            words=words,
        )
        assert turn is not None and turn.raw_text is None
        await pipeline.analyse(state, turn, rec)
        at += 0.3 * len(words) + 1.0
    await pipeline.end_session(state, rec)
    events += rec.events

    # ---- what came out, what was kept
    await pipeline.store.flush()
    rows, logs = dump(pipeline, caplog)
    prompts = [json.dumps(list(req.messages), ensure_ascii=False) for req in generator.requests]
    sent = [json.loads(line) for line in outbox.read_text(encoding="utf-8").splitlines()]

    # the paths really ran: every turn stored, prompts with redacted conversation, replies sent
    assert len(rows) > 3 * len(CORPUS)
    chat_turns = len(SLICES["chat_customer"]) + len(agent_texts)
    sms_turns = len(sms_texts) + len(agent_texts[:5])
    email_turns = len(email_texts) + 1 + 1  # "one more thing" and the agent's reply
    finals = [e for e in events if e.get("type") == "transcript.final"]
    assert len(finals) == chat_turns + sms_turns + email_turns + len(SLICES["voice"])
    assert any(e.get("type") == "assist.delta" for e in events), "generated replies were streamed"
    assert len(prompts) >= len(SLICES["chat_customer"]) and any("[CARD]" in p for p in prompts)
    assert {m["channel"] for m in sent} == {"sms", "email"} and len(sent) >= 6
    assert {m["to"] for m in sent} == {SMS_FROM, EMAIL_FROM}  # the contact is used, in memory, for replies
    assert any(r.startswith("events: ") and "final_text" in r for r in rows), "edited feedback text is stored"

    found = (
        leaks("event", [json.dumps(e, ensure_ascii=False) for e in events])
        + leaks("database", rows)
        + leaks("log", logs)
        + leaks("prompt", prompts)
        + leaks(
            "outbox",
            [json.dumps({k: v for k, v in m.items() if k != "to"}, ensure_ascii=False) for m in sent],
        )
    )
    assert not found, f"{len(found)} raw values leaked:\n" + "\n".join(found[:40])


async def test_an_email_subject_with_pii_stays_out_of_the_outbox(world, caplog):
    """The subject is not part of the analysed text, but the reply's subject ("Re: ...") is written to the outbox
    file: it goes through the guardrail first (``ChannelInbox.email``)."""
    pipeline, inbox, hub, _, outbox = world
    subject = "card 4111 1111 1111 1111 charged twice, call 212-555-0147"
    session_id = await inbox.email(
        parse_email(email(0, "I was charged twice, please help", subject), max_bytes=1 << 20)
    )
    live = hub.get("demo", session_id)
    await pipeline.handle(live.state, ChatMessage(text="We are looking into it.", speaker="agent"), live.emit)
    await pipeline.end_session(live.state, live.emit)
    events = [json.dumps(e, ensure_ascii=False) for e in live.log]
    hub.close(live)
    await pipeline.store.flush()
    rows, logs = dump(pipeline, caplog)
    assert not leaks("event", events) + leaks("database", rows) + leaks("log", logs)
    (reply,) = [json.loads(line) for line in outbox.read_text(encoding="utf-8").splitlines()]
    assert reply["body"] == "We are looking into it."
    found = leaks("outbox", [json.dumps({k: v for k, v in reply.items() if k != "to"}, ensure_ascii=False)])
    assert not found, f"the e-mail subject leaked into the reply: {found}"
    assert reply["subject"].startswith("Re: ") and "charged twice" in reply["subject"]  # redacted, not dropped
