"""Live sessions of one ingress process: the customer's side, the staff watching, and what each may see.

Every event a session publishes goes through its ``LiveSession.emit``: it is delivered to the customer's side
(a websocket or gRPC stream, or the SMS / e-mail outbound adapter), filtered to the conversation when that
side is a customer, and queued to every watcher (the agent desktop, ``switchboard tail``). A watcher gets the
session so far first (``session.snapshot``), then each event live, in order.

A slow watcher never slows the session: its queue is bounded and it is dropped (told to reconnect) when full.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .events import Routing, SessionEnded, SessionSnapshot, _Event

if TYPE_CHECKING:
    from .session import SessionState

__all__ = ["CUSTOMER_VISIBLE", "LiveHub", "LiveSession", "Watcher", "for_customer"]

log = logging.getLogger("switchboard.live")

Deliver = Callable[[_Event], Awaitable[None]]

#: What a customer's own connection receives: the conversation and notices, never the analysis.
CUSTOMER_VISIBLE = frozenset({"session.started", "transcript.final", "routing", "error", "session.ended"})


def for_customer(event: _Event) -> _Event | None:
    """The customer's view of an event (None: not for them)."""
    if event.type not in CUSTOMER_VISIBLE:
        return None
    if isinstance(event, SessionEnded):
        return event.model_copy(update={"summary": None})
    if isinstance(event, Routing):  # the notice is for them; the agent and the internal reason are not
        return event.model_copy(update={"agent_id": None, "reason": None})
    return event


class Watcher:
    """One watching connection: ``async for event in watcher`` yields wire dicts until the session ends."""

    def __init__(self, snapshot: SessionSnapshot, maxsize: int) -> None:
        self.snapshot = snapshot
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize)
        self.dropped = False

    def put(self, item: dict[str, Any] | None) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped = True  # too slow: the session never waits for a watcher
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> dict[str, Any]:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item


@dataclass
class LiveSession:
    state: SessionState
    deliver: Deliver | None = None  # the customer's side
    customer_view: bool = False  # deliver the conversation only (role customer, SMS, e-mail)
    started_at: float = field(default_factory=time.time)
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5000))
    watchers: set[Watcher] = field(default_factory=set)
    sentiment: deque[float] = field(default_factory=lambda: deque(maxlen=60))
    last_text: str = ""
    escalation: dict[str, Any] | None = None
    routing: dict[str, Any] | None = None
    ended: bool = False

    async def emit(self, event: _Event) -> None:
        wire = event.wire()
        self._observe(wire)
        for watcher in list(self.watchers):
            watcher.put(wire)
            if watcher.dropped:
                self.watchers.discard(watcher)
        if self.deliver is not None:
            shown = for_customer(event) if self.customer_view else event
            if shown is not None:
                await self.deliver(shown)

    def _observe(self, wire: dict[str, Any]) -> None:
        self.log.append(wire)
        kind = wire["type"]
        if kind == "sentiment":
            self.sentiment.append(float(wire["score"]))
        elif kind == "transcript.final":
            self.last_text = f"{wire['speaker']}: {wire['text']}"[:200]
        elif kind == "escalation":
            self.escalation = {k: wire.get(k) for k in ("queue", "priority", "reason")}
        elif kind == "routing":
            self.routing = {
                k: wire.get(k) for k in ("status", "queue", "agent_id", "position", "expected_wait_s")
            }
        elif kind == "session.ended":
            self.ended = True

    def snapshot(self) -> SessionSnapshot:
        return SessionSnapshot(
            session_id=self.state.session_id,
            channel=self.state.channel,  # type: ignore[arg-type]
            customer_id=self.state.customer_id,
            status="ended" if self.ended else "live",
            events=list(self.log),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.state.session_id,
            "channel": self.state.channel,
            "customer_id": self.state.customer_id,
            "status": "ended" if self.ended else "live",
            "started_at": round(self.started_at, 3),
            "turns": self.state.turns,
            "sentiment": list(self.sentiment),
            "last_text": self.last_text,
            "escalation": self.escalation,
            "routing": self.routing,
        }


class LiveHub:
    """The live sessions of this process, by tenant. Ended sessions stay listed (``keep_ended``) so the
    desktop can still open them; their full history is in the session store."""

    def __init__(self, *, keep_ended: int = 200, watcher_queue: int = 2048) -> None:
        self._live: dict[tuple[str, str], LiveSession] = {}
        self._ended: deque[LiveSession] = deque(maxlen=keep_ended)
        self._watcher_queue = watcher_queue

    def open(self, state: SessionState, deliver: Deliver | None, *, customer_view: bool) -> LiveSession:
        key = (state.tenant, state.session_id)
        live = self._live.get(key)
        if live is None or live.ended:  # new, or resumed after it ended
            live = LiveSession(state, deliver, customer_view)
            self._live[key] = live
        else:  # resumed on a new connection: the watchers stay, the customer's side moves
            live.state, live.deliver, live.customer_view = state, deliver, customer_view
        return live

    def get(self, tenant: str, session_id: str) -> LiveSession | None:
        live = self._live.get((tenant, session_id))
        if live is not None:
            return live
        return next((s for s in self._ended if s.state.tenant == tenant and s.state.session_id == session_id), None)

    def close(self, live: LiveSession) -> None:
        """The session ended (or its customer left): watchers get the end of the stream."""
        live.ended = True
        live.deliver = None
        self._live.pop((live.state.tenant, live.state.session_id), None)
        self._ended.append(live)
        for watcher in live.watchers:
            watcher.put(None)
        live.watchers.clear()

    def watch(self, live: LiveSession) -> Watcher:
        """Snapshot and subscription in one step (no await between them: no event is missed or doubled)."""
        watcher = Watcher(live.snapshot(), self._watcher_queue)
        if live.ended:
            watcher.put(None)
        else:
            live.watchers.add(watcher)
        return watcher

    def unwatch(self, live: LiveSession, watcher: Watcher) -> None:
        live.watchers.discard(watcher)

    def sessions(self, tenant: str) -> list[dict[str, Any]]:
        """Live sessions first, then recently ended ones; newest first within each."""
        live = [s for (t, _), s in self._live.items() if t == tenant]
        ended = [s for s in self._ended if s.state.tenant == tenant and (tenant, s.state.session_id) not in self._live]
        by_start = lambda s: -s.started_at  # noqa: E731
        return [s.summary() for s in sorted(live, key=by_start) + sorted(ended, key=by_start)]

    @property
    def active(self) -> int:
        return len(self._live)
