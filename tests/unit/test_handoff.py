"""Escalations routed to human agents, the CRM kept in step, and SMS / e-mail threads as sessions: the real
pipeline with the real models, a real SQLite store, the in-process routing state, the local Zendesk and the
local outbox. Fakes only inject faults."""

from __future__ import annotations

import asyncio
import json

import pytest

from pipelines.channels import OutboxSender, parse_email
from pipelines.channels.inbox import ChannelInbox
from pipelines.channels.outbound import OutboundError
from pipelines.channels.sms import InboundSms
from pipelines.crm import ZendeskCrm
from pipelines.events import ChatMessage, SessionStart
from pipelines.handoff import Handoff
from pipelines.live import LiveHub
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.routing import Agent, MemoryRoutingState, Router
from pipelines.session import Pipeline
from pipelines.storage import SessionStore
from tests.fakes import Failing, Recorder
from tests.zendesk_server import FakeZendesk

pytestmark = [pytest.mark.unit]

ANGRY = "This is ridiculous, I want to cancel and speak to a manager right now"
SECRET = "test-channel-secret"


def agent(agent_id: str, skills: set[str], capacity: int = 1, status: str = "available") -> Agent:
    return Agent(agent_id, "demo", agent_id.title(), frozenset(skills), capacity, status)  # type: ignore[arg-type]


@pytest.fixture
async def env(settings, local_models):
    store = SessionStore(settings.sqlalchemy_url)
    await store.start()
    review = ReviewQueue(store, load_or_create_key(settings.resolved_review_key_file))
    dispatched: list = []

    async def on_dispatch(tenant, decision):
        dispatched.append((tenant, decision))

    def build(router: Router | None = None, crm=None) -> Pipeline:
        handoff = Handoff(router, on_dispatch) if router is not None else None
        return Pipeline(local_models, store, review, settings, handoff=handoff, crm=crm)

    yield build, store, dispatched
    await store.close()


async def escalate(pipeline: Pipeline, customer: str):
    rec = Recorder()
    state, started = await pipeline.start_session("demo", SessionStart(channel="chat", customer_id=customer))
    await rec(started)
    await pipeline.handle(state, ChatMessage(text=ANGRY), rec)
    return state, rec


async def test_an_escalation_is_routed_and_the_seat_freed_at_the_end(env):
    build, store, _ = env
    routing = MemoryRoutingState()
    await routing.upsert_agent(agent("agent-sue", {"supervisor", "retention"}))
    pipeline = build(Router(routing))
    state, rec = await escalate(pipeline, "c-angry")
    escalations = rec.of("escalation")
    (routed,) = rec.of("routing")  # one hand-off for the turn, whatever number of rules fired
    escalation = max(escalations, key=lambda e: ["low", "normal", "high", "urgent"].index(e["priority"]))
    types = [e["type"] for e in rec.events]
    assert len(escalations) >= 1 and types.index("escalation") < types.index("routing")
    assert routed["status"] == "assigned" and routed["agent_id"] == "agent-sue"
    assert routed["queue"] == escalation["queue"] and routed["priority"] == escalation["priority"]
    assert routed["notice"] == "An agent will be with you shortly."
    assert routed["utterance_id"] == escalation["utterance_id"]
    assert (await routing.get_agent("demo", "agent-sue")).active == 1
    await pipeline.handle(state, ChatMessage(text=ANGRY), rec)  # escalates again: the agent has it already
    assert len(rec.of("routing")) == 1 and (await routing.get_agent("demo", "agent-sue")).active == 1
    await pipeline.end_session(state, rec)
    assert (await routing.get_agent("demo", "agent-sue")).active == 0
    stored = [e["type"] for e in await store.session_events("demo", state.session_id)]
    assert "routing" in stored


async def test_a_busy_queue_waits_then_gets_the_freed_agent(env):
    build, _, dispatched = env
    routing = MemoryRoutingState()
    await routing.upsert_agent(agent("agent-sue", {"supervisor", "retention"}, capacity=1))
    pipeline = build(Router(routing, overflow_after_s=10_000))
    first, _ = await escalate(pipeline, "c-1")
    second, rec = await escalate(pipeline, "c-2")
    (routed,) = rec.of("routing")
    assert routed["status"] == "queued" and routed["position"] == 1 and "agent_id" not in routed
    assert routed["expected_wait_s"] > 0 and "number 1 in line" in routed["notice"]
    await pipeline.end_session(first, None)  # the agent is free: the waiting conversation is theirs
    ((tenant, decision),) = dispatched
    assert tenant == "demo" and decision.session_id == second.session_id and decision.agent_id == "agent-sue"
    await pipeline.end_session(second, None)
    assert (await routing.get_agent("demo", "agent-sue")).active == 0
    assert await routing.queue_entries("demo", routed["queue"]) == []


async def test_nobody_with_the_skill_online_overflows_to_supervisors(env):
    build, _, _ = env
    routing = MemoryRoutingState()
    await routing.upsert_agent(agent("agent-ed", {"supervisor"}, status="away"))
    pipeline = build(Router(routing))
    state, rec = await escalate(pipeline, "c-3")
    (routed,) = rec.of("routing")
    assert routed["queue"] == "supervisor" and routed["status"] in ("queued", "overflow")
    await pipeline.end_session(state, None)
    assert await routing.queue_entries("demo", "supervisor") == []  # a conversation that ended leaves its queue


async def test_routing_down_keeps_the_escalation_and_reports_it(env):
    build, _, _ = env
    routing = Failing(MemoryRoutingState(), error=ConnectionError("redis down"))
    pipeline = build(Router(routing))  # type: ignore[arg-type]
    state, rec = await escalate(pipeline, "c-4")
    assert rec.of("escalation") and not rec.of("routing")
    errors = rec.of("error")
    assert [e["code"] for e in errors] == ["stage_failed"] and "routing" in errors[0]["message"]
    await pipeline.end_session(state, rec)  # no seat to free, and ending never fails on the router
    assert rec.of("session.ended")


# ---------------------------------------------------------------- CRM


@pytest.fixture
def zd():
    server = FakeZendesk().start()
    yield server
    server.stop()


async def test_the_crm_gets_context_notes_and_one_case_without_pii(env, zd):
    build, store, _ = env
    zd.add_user("c-crm", tags=["vip"], user_fields={"plan": "gold"})
    crm = ZendeskCrm(zd.url, zd.email, zd.token, retries=1, backoff_s=0.01)
    try:
        pipeline = build(crm=crm)
        rec = Recorder()
        state, _ = await pipeline.start_session("demo", SessionStart(channel="chat", customer_id="c-crm"))
        await pipeline.handle(state, ChatMessage(text="My card 4111 1111 1111 1111 was charged twice"), rec)
        await pipeline.handle(state, ChatMessage(text="I will refund it", speaker="agent"), rec)
        ended = await pipeline.end_session(state, rec)
        assert ended.summary["crm"] == {"open_tickets": 0, "plan": "gold", "tags": ["vip"]}
        (ticket,) = zd.tickets_for(state.session_id)
        (comment,) = zd.comments[ticket["id"]]
        assert "customer: My card" in comment["body"] and "agent: I will refund it" in comment["body"]
        assert "4111" not in json.dumps(zd.comments) and "4111" not in json.dumps(zd.tickets)
        assert ticket["status"] == "solved"  # no escalation: the case is closed
        # a second end (a retry after a lost answer) updates the same case, never a second one
        await pipeline.crm.close(state.crm, "demo", state.session_id, "c-crm", ended.summary)
        assert len(zd.tickets_for(state.session_id)) == 1
        log = await store.session_events("demo", state.session_id)
        (case,) = [e for e in log if e["type"] == "crm.case"]
        assert case["case_id"] == str(ticket["id"]) and case["created"] is True
    finally:
        await crm.aclose()


async def test_a_failing_crm_costs_nothing_but_an_error_event(env, zd):
    build, store, _ = env
    crm = ZendeskCrm(zd.url, zd.email, zd.token, retries=0, backoff_s=0.01)
    try:
        pipeline = build(crm=crm)
        rec = Recorder()
        state, _ = await pipeline.start_session("demo", SessionStart(channel="chat", customer_id="c-down"))
        zd.fail_next(100, status=503)
        await pipeline.handle(state, ChatMessage(text="hello, I need help with my bill"), rec)
        await pipeline.handle(state, ChatMessage(text="and a refund too"), rec)
        await asyncio.gather(*([state.crm.writer] if state.crm.writer else []))
        # the session went on: both turns analysed; one crm_unavailable for the agent, not one per note
        assert len(rec.of("transcript.final")) == 2 and len(rec.of("assist.suggestion")) >= 2
        assert [e["code"] for e in rec.of("error")] == ["crm_unavailable"]
        zd._faults.clear()  # the CRM is back
        await pipeline.end_session(state, rec)
        log = await store.session_events("demo", state.session_id)
        cases = [e for e in log if e["type"] == "crm.case"]
        assert cases and "case_id" in cases[0]  # the case was written at the end with the whole transcript
        (ticket,) = zd.tickets_for(state.session_id)
        assert "and a refund too" in zd.comments[ticket["id"]][0]["body"]
    finally:
        await crm.aclose()


# ---------------------------------------------------------------- SMS and e-mail threads


class BrokenOutbound:
    """A provider that refuses every send (an expired credential, say)."""

    def __init__(self) -> None:
        self.tries = 0

    async def send(self, msg) -> str:
        self.tries += 1
        raise OutboundError("provider said 401", retryable=False, status=401)


@pytest.fixture
async def inbox(env, tmp_path):
    build, store, _ = env
    routing = MemoryRoutingState()
    await routing.upsert_agent(agent("agent-sue", {"supervisor", "retention"}))
    pipeline = build(Router(routing))
    hub = LiveHub()
    outbox = tmp_path / "outbox.jsonl"
    box = ChannelInbox(
        pipeline, hub, tenant="demo", secret=SECRET, sms_out=OutboxSender(outbox), email_out=OutboxSender(outbox)
    )
    yield box, hub, store, outbox
    for live in list(hub._live.values()):
        await pipeline.end_session(live.state, live.emit)
        hub.close(live)


def sms(body: str, sid: str, from_number: str = "+14155550100") -> InboundSms:
    return InboundSms(sid, from_number, "+18005550199", body)


def sent(outbox) -> list[dict]:
    return [json.loads(line) for line in outbox.read_text().splitlines()] if outbox.exists() else []


async def test_one_sms_thread_is_one_session_and_agent_replies_go_out(inbox):
    box, hub, store, outbox = inbox
    first = await box.sms(sms("Hi, I need to change my appointment", "SM1"))
    again = await box.sms(sms("It is for next Tuesday", "SM2"))
    other = await box.sms(sms("Hello?", "SM3", from_number="+14155550111"))
    assert first == again != other
    live = hub.get("demo", first)
    watcher = hub.watch(live)
    assert [e["speaker"] for e in watcher.snapshot.events if e["type"] == "transcript.final"] == ["customer"] * 2
    assert sent(outbox) == []  # the customer's own messages are not echoed back
    # the agent answers from the desktop: the reply goes out by SMS, redacted like every text
    await box.pipeline.handle(live.state, ChatMessage(text="Sure, call me at 415 555 0123", speaker="agent"), live.emit)
    (reply,) = sent(outbox)
    assert reply["channel"] == "sms" and reply["to"] == "+14155550100" and reply["sender"] == "+18005550199"
    assert reply["session_id"] == first and "Sure" in reply["body"] and "555 0123" not in reply["body"]
    row = await store.get_session("demo", first)
    assert row.customer_id.startswith("sms-") and "4155550100" not in row.customer_id
    finals = [e for e in await store.session_events("demo", first) if e["type"] == "transcript.final"]
    assert [f["speaker"] for f in finals] == ["customer", "customer", "agent"]


async def test_an_escalated_sms_gets_the_routing_notice_by_sms(inbox):
    box, _, _, outbox = inbox
    await box.sms(sms(ANGRY, "SM9"))
    (notice,) = sent(outbox)
    assert notice["body"] == "An agent will be with you shortly."


async def test_concurrent_first_messages_of_a_thread_open_one_session(inbox):
    box, _, _, _ = inbox
    ids = await asyncio.gather(*(box.sms(sms(f"message {i} about my bill", f"SMc{i}")) for i in range(4)))
    assert len(set(ids)) == 1


RAW_FIRST = b"""From: Pat Doe <pat@example.org>
To: help@clinic.example
Subject: Billing question
Message-ID: <m1@example.org>

I was charged twice for my visit, can you help?
"""

RAW_REPLY = b"""From: Pat Doe <pat@example.org>
To: help@clinic.example
Subject: Re: Billing question
Message-ID: <m3@example.org>
In-Reply-To: <m2@clinic.example>
References: <m1@example.org> <m2@clinic.example>

Thanks, the charge was on March 3.

On Tue, Mar 4, 2025 at 10:00 AM Help <help@clinic.example> wrote:
> We are looking into it.
> I was charged twice for my visit, can you help?
"""


async def test_email_threads_by_references_and_strips_quoted_history(inbox):
    box, hub, store, outbox = inbox
    first = await box.email(parse_email(RAW_FIRST, max_bytes=1 << 20))
    live = hub.get("demo", first)
    await box.pipeline.handle(live.state, ChatMessage(text="We are looking into it.", speaker="agent"), live.emit)
    (reply,) = sent(outbox)
    assert reply["channel"] == "email" and reply["to"] == "pat@example.org"
    assert reply["subject"] == "Re: Billing question" and reply["in_reply_to"] == "<m1@example.org>"
    # the customer answers our reply (whose id only the References and In-Reply-To know): same session
    second = await box.email(parse_email(RAW_REPLY, max_bytes=1 << 20))
    assert second == first
    finals = [e for e in await store.session_events("demo", first) if e["type"] == "transcript.final"]
    assert finals[-1]["text"].startswith("Thanks, the charge was on March 3")
    assert "looking into it" not in finals[-1]["text"]  # the quote is not analysed again
    # a message that only references the thread's first id joins it too; an unrelated one does not
    third = RAW_FIRST.replace(b"<m1@example.org>", b"<m4@example.org>\nReferences: <m1@example.org>")
    assert await box.email(parse_email(third, max_bytes=1 << 20)) == first
    unrelated = RAW_FIRST.replace(b"<m1@example.org>", b"<m9@example.org>")
    assert await box.email(parse_email(unrelated, max_bytes=1 << 20)) != first


async def test_an_undeliverable_reply_is_reported_to_the_agent_and_kept(inbox):
    box, hub, store, _ = inbox
    broken = BrokenOutbound()
    box.outbound["sms"] = broken
    session_id = await box.sms(sms("Can you call me back?", "SMb"))
    live = hub.get("demo", session_id)
    watcher = hub.watch(live)
    await box.pipeline.handle(live.state, ChatMessage(text="Yes, tomorrow at 9", speaker="agent"), live.emit)
    assert broken.tries == 1
    seen = []
    while not watcher.queue.empty():
        seen.append(watcher.queue.get_nowait())
    errors = [e for e in seen if e and e["type"] == "error"]
    assert [e["code"] for e in errors] == ["outbound_failed"] and errors[0]["retryable"] is False
    log = await store.session_events("demo", session_id)
    (kept,) = [e for e in log if e["type"] == "outbound.failed"]
    assert kept["text"] == "Yes, tomorrow at 9"
    assert any(e["type"] == "error" and e["code"] == "outbound_failed" for e in log)
