"""What the session pipeline hands to systems outside it: escalated conversations to human agents
(:class:`Handoff`, over ``pipelines.routing.Router``) and the conversation to the CRM (:class:`CrmSync`, over
``pipelines.crm.CrmConnector``).

Neither ever holds a turn up: routing runs after the escalation is sent, CRM notes are written in the
background in order, and a failure of either becomes an ``error`` event (``stage_failed``, ``crm_unavailable``)
while the session goes on. Every text given to the CRM has passed the guardrail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import metrics
from .crm import CaseRef, CrmConnector, CustomerContext
from .events import ErrorEvent, Escalation, Routing
from .routing import Router, RoutingDecision

__all__ = ["Handoff", "CrmSync", "CrmSession", "routing_event"]

log = logging.getLogger("switchboard.handoff")

#: called with (tenant, decision) when a waiting conversation is given to an agent later (any session)
Dispatched = Callable[[str, RoutingDecision], Awaitable[None]]


def routing_event(decision: RoutingDecision, utterance_id: str | None = None) -> Routing:
    status = "assigned" if decision.assigned else ("overflow" if decision.overflow else "queued")
    return Routing(
        status=status,
        queue=decision.queue,
        priority=decision.priority,
        notice=decision.notice(),
        agent_id=decision.agent_id,
        position=decision.position,
        expected_wait_s=None if decision.expected_wait_s is None else round(decision.expected_wait_s, 1),
        reason=decision.reason,
        utterance_id=utterance_id,
    )


class Handoff:
    """Escalations → the router; session end → the seat is freed (or the queue entry dropped) and the agent's
    next waiting conversation is dispatched through ``on_dispatch``."""

    def __init__(self, router: Router, on_dispatch: Dispatched | None = None) -> None:
        self.router = router
        self.on_dispatch = on_dispatch

    async def route(self, session_id: str, tenant: str, escalation: Escalation) -> Routing | None:
        """Route an escalated conversation; None when an agent holds it already. A conversation still waiting
        is placed again (a later, more urgent escalation moves it up). The escalation's priority already
        includes the customer's features (escalation feature rules), so they are not applied twice here."""
        if await self.router.state.get_assignment(tenant, session_id) is not None:
            return None
        decision = await self.router.route(session_id, tenant, escalation.queue, escalation.priority)
        await self.observe_queue(tenant, decision.queue)
        return routing_event(decision, escalation.utterance_id)

    async def release(self, tenant: str, session_id: str, handle_time_s: float) -> None:
        """The conversation is over: free its agent's seat, or take it out of its queue."""
        held = await self.router.state.get_assignment(tenant, session_id)
        if held is None:
            waiting = await self.router.state.remove(tenant, session_id)
            if waiting is not None:
                await self.observe_queue(tenant, waiting.queue)
            return
        nxt = await self.router.finish(tenant, session_id, held.agent_id, handle_time_s)
        if nxt is not None:
            await self.observe_queue(tenant, nxt.queue)
            if self.on_dispatch is not None:
                await self.on_dispatch(tenant, nxt)

    async def observe_queue(self, tenant: str, queue: str) -> None:
        """Update the queue-depth gauge after a conversation joined or left ``queue`` (routing state is shared
        by every replica: each reports the depth it last saw; dashboards take the max)."""
        try:
            depth = len(await self.router.state.queue_entries(tenant, queue))
        except Exception as exc:  # a gauge is never worth failing a hand-off
            log.warning("queue depth unavailable (%s)", type(exc).__name__)
            return
        metrics.set_queue_depth(tenant, queue, depth)


@dataclass
class CrmSession:
    """One session's CRM state: the context fetch, the case it writes to and its notes, in order."""

    context: asyncio.Future | None = None
    case: CaseRef | None = None
    notes: asyncio.Queue = field(default_factory=asyncio.Queue)
    writer: asyncio.Task | None = None
    transcript: list[str] = field(default_factory=list)  # redacted "speaker: text" lines, for the case
    failed: bool = False  # an error event was sent already (one per session, not one per note)


class CrmSync:
    """The CRM side of every session of a process."""

    def __init__(self, crm: CrmConnector, *, context_timeout_s: float = 2.0) -> None:
        self.crm = crm
        self.context_timeout_s = context_timeout_s

    @property
    def enabled(self) -> bool:
        return self.crm.name != "none"

    def start(self, tenant: str, customer_id: str) -> CrmSession:
        """Fetch the customer's CRM context in the background (never delays ``session.started``)."""
        session = CrmSession()
        if self.enabled:
            session.context = asyncio.ensure_future(
                asyncio.wait_for(self.crm.fetch_context(tenant, customer_id), self.context_timeout_s)
            )
            session.context.add_done_callback(_consume)
        return session

    async def context(self, session: CrmSession) -> CustomerContext | None:
        """The context if it arrived (None: unknown customer, no CRM, or the CRM failed: logged)."""
        if session.context is None:
            return None
        try:
            return await session.context
        except Exception:
            return None

    @staticmethod
    def line(session: CrmSession, speaker: str, text: str) -> str:
        """Add a redacted transcript line to what goes into the case at the end; returns the line."""
        line = f"{speaker}: {text}"
        session.transcript.append(line)
        return line

    def note(
        self,
        session: CrmSession,
        tenant: str,
        session_id: str,
        line: str,
        sentiment: float | None,
        report: Callable[[ErrorEvent], Awaitable[None]],
    ) -> None:
        """Queue a transcript line (with its sentiment) as an internal note on the session's case (the line is
        already in ``session.transcript``: see :meth:`line`)."""
        if not self.enabled:
            return
        session.notes.put_nowait((line, sentiment))
        if session.writer is None or session.writer.done():
            session.writer = asyncio.ensure_future(self._write_notes(session, tenant, session_id, report))

    async def _write_notes(
        self, session: CrmSession, tenant: str, session_id: str, report: Callable[[ErrorEvent], Awaitable[None]]
    ) -> None:
        while not session.notes.empty():
            line, sentiment = session.notes.get_nowait()
            try:
                session.case = await self.crm.log_event(tenant, session_id, session.case, line, sentiment)
            except Exception as exc:  # the line is still in the transcript that goes into the case at the end
                log.warning("CRM note failed (%s)", type(exc).__name__, extra={"session_id": session_id})
                if not session.failed:
                    session.failed = True
                    await report(
                        ErrorEvent(
                            code="crm_unavailable",
                            message="the CRM could not be updated; the full transcript goes into the case "
                            "at the end of the session",
                            retryable=True,
                        )
                    )

    async def close(
        self,
        session: CrmSession,
        tenant: str,
        session_id: str,
        customer_id: str,
        summary: dict[str, Any],
        *,
        attempts: int = 3,
        backoff_s: float = 1.0,
    ) -> CaseRef | None:
        """Create or update the session's case (the connector makes this idempotent: retrying never makes a
        second case). None when the CRM kept failing: the session's transcript stays in the store."""
        if not self.enabled:
            return None
        if session.writer is not None:
            await asyncio.gather(session.writer, return_exceptions=True)
        case_summary = {**summary, "status": "solved" if not summary.get("escalations") else "open"}
        for attempt in range(attempts):
            try:
                session.case = await self.crm.close_case(
                    tenant, session_id, customer_id, case_summary, session.transcript
                )
                return session.case
            except Exception as exc:
                retryable = getattr(exc, "retryable", True)
                log.warning(
                    "CRM case for the session failed (%s, attempt %d/%d)",
                    type(exc).__name__, attempt + 1, attempts, extra={"session_id": session_id},
                )  # fmt: skip
                if not retryable or attempt + 1 == attempts:
                    return None
                await asyncio.sleep(backoff_s * 2**attempt)
        return None


def _consume(future: asyncio.Future) -> None:
    """A context fetch nobody awaited must not log 'exception was never retrieved'."""
    if not future.cancelled():
        exc = future.exception()
        if exc is not None:
            log.warning("CRM context unavailable (%s)", type(exc).__name__)
