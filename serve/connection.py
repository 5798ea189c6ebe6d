"""One client connection carrying one session, whatever the transport (websocket JSON, gRPC protobuf), and
one watching connection (agent desktop, ``switchboard tail``).

Frames are translated to typed events here and errors are mapped to stable codes in one place; everything else
happens in ``pipelines.session.Pipeline``. A transport only moves frames: ``receive()`` returns a JSON text
frame, raw audio bytes, an already-decoded event dict (gRPC), or None when the peer is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from pipelines import metrics
from pipelines.errors import ProtocolError, SwitchboardError
from pipelines.events import (
    CLIENT_TYPES,
    AudioFormat,
    ChatMessage,
    ErrorEvent,
    SessionEnd,
    SessionSnapshot,
    SessionStart,
    SuggestionFeedback,
    _Event,
    parse_client_event,
)
from pipelines.live import LiveSession

from .auth import Principal

if TYPE_CHECKING:
    from pipelines.session import SessionState
    from pipelines.voice import VoiceSession

    from .ingress import Ingress

__all__ = ["Transport", "SessionConnection", "WatchConnection", "parse_frame", "validation_message"]

log = logging.getLogger("switchboard.ingress")

Frame = str | bytes | dict[str, Any] | None


class Transport(Protocol):
    async def receive(self) -> Frame: ...

    async def send(self, event: _Event | dict[str, Any]) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


def validation_message(exc: ValidationError) -> str:
    """Field locations and reasons only: pydantic's default message echoes input values, which may hold PII."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}"
        for e in exc.errors(include_input=False)
    ]
    return "invalid event: " + "; ".join(parts[:5])


def parse_frame(frame: str | dict[str, Any], limit: int) -> Any:
    """A JSON text frame (or a decoded dict) → client event, or the ProtocolError naming what is wrong."""
    if isinstance(frame, str):
        if len(frame) > limit // 4 and len(frame.encode()) > limit:
            raise ProtocolError(
                f"text frame of {len(frame.encode())} bytes exceeds the {limit}-byte limit; split the message",
                code="message_too_large",
            )
        try:
            raw = json.loads(frame)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"frame is not valid JSON ({exc.msg} at {exc.pos})", code="bad_json") from None
    else:
        raw = frame
    if not isinstance(raw, dict):
        raise ProtocolError("frame must be a JSON object with a `type` field", code="bad_json")
    if raw.get("type") not in CLIENT_TYPES:
        raise ProtocolError(
            f"unknown event type {str(raw.get('type'))[:40]!r}; expected one of {', '.join(CLIENT_TYPES)}",
            code="unknown_type",
        )
    try:
        return parse_client_event(raw)
    except ValidationError as exc:
        raise ProtocolError(validation_message(exc), code="invalid_event") from None


def _internal_error(what: str) -> ErrorEvent:
    return ErrorEvent(
        code="internal_error", message=f"the server could not handle that {what}; the session continues", retryable=True
    )


class SessionConnection:
    """The customer's (or a test client's) side of one session."""

    def __init__(self, ingress: Ingress, transport: Transport, principal: Principal) -> None:
        self.ingress = ingress
        self.transport = transport
        self.principal = principal
        self.state: SessionState | None = None
        self.live: LiveSession | None = None
        self.voice: VoiceSession | None = None
        self.admitted = False  # holds a place counted by the load governor (released in _finish)

    async def emit(self, event: _Event) -> None:
        if self.live is not None:
            await self.live.emit(event)
        else:
            await self.transport.send(event)

    async def reject(self, error: SwitchboardError | ErrorEvent) -> None:
        event = error if isinstance(error, ErrorEvent) else error.to_event()
        if self.state is not None and not self.state.ended:
            await self.ingress.pipeline.publish(self.state, self.emit, event)  # stored with the session too
        else:
            channel = self.state.channel if self.state is not None else None
            metrics.count_error(event.code, event.retryable, self.principal.tenant, channel)
            await self.transport.send(event)

    async def run(self) -> None:
        limit = self.ingress.settings.max_message_bytes
        try:
            while True:
                frame = await self.transport.receive()
                if frame is None:
                    break
                try:
                    if isinstance(frame, bytes):
                        await self._audio(frame, limit)
                    elif await self._event(parse_frame(frame, limit)):
                        return
                except SwitchboardError as exc:
                    await self.reject(exc)
                except Exception as exc:  # never let one frame take the connection (or the server) down
                    log.error("unexpected error handling a frame (%s)", type(exc).__name__)
                    await self.reject(_internal_error("frame"))
        finally:
            await self._finish()

    async def _audio(self, data: bytes, limit: int) -> None:
        if len(data) > limit:
            raise ProtocolError(f"binary frame of {len(data)} bytes exceeds {limit}", code="message_too_large")
        if self.state is None:
            raise ProtocolError("send session.start before audio", code="session_not_started")
        if self.voice is None:
            raise ProtocolError(
                f"binary audio frames are for voice sessions; this is a {self.state.channel} session",
                code="unexpected_binary",
            )
        await self.voice.feed(data)

    async def _event(self, event: Any) -> bool:
        """Handle one client event; True when the session ended and the connection should close."""
        pipeline = self.ingress.pipeline
        if isinstance(event, SessionStart):
            await self._start(event)
            return False
        if self.state is None:
            raise ProtocolError("send session.start first", code="session_not_started")
        if self.state.ended:
            raise ProtocolError("this session has ended; start or resume one", code="session_ended")
        if isinstance(event, SessionEnd):
            await self._finish(status="ended")
            await self.transport.close(1000)
            return True
        if isinstance(event, ChatMessage):
            self.ingress.limiter.check(self.principal.tenant)
        if isinstance(event, SuggestionFeedback) and not self.principal.may("feedback"):
            raise ProtocolError("only agents send suggestion feedback", code="forbidden")
        if isinstance(event, ChatMessage) and event.speaker != "customer" and not self.principal.may("session.answer"):
            raise ProtocolError("a customer token writes as the customer", code="forbidden")
        await pipeline.handle(self.state, event, self.emit)
        return False

    async def _start(self, event: SessionStart) -> None:
        if self.state is not None:
            raise ProtocolError("this connection already has a session", code="session_already_started")
        self.ingress.limiter.check(self.principal.tenant, "new session")
        await self._check_own(event)
        if event.channel == "voice" and self.ingress.vad is None:
            raise ProtocolError(
                "voice is not enabled on this server (no ASR deployment); use chat, sms or email",
                code="channel_unavailable",
            )
        governor = self.ingress.pipeline.governor
        await governor.admit(self.transport.send)  # at capacity: waits with a `session.queued` notice
        self.admitted = True
        try:
            state, started = await self.ingress.pipeline.start_session(self.principal.tenant, event)
        except BaseException:
            self.admitted = False
            governor.leave()
            raise
        self.state = state
        self.live = self.ingress.hub.open(state, self.transport.send, customer_view=not self.principal.staff)
        await self.emit(started)
        if state.channel == "voice":
            fmt = event.audio or AudioFormat()
            self.voice = await self.ingress._voice_session(
                state, self.emit, fmt.encoding, fmt.sample_rate, fmt.channels, resumed=bool(started.resumed)
            )

    async def _check_own(self, event: SessionStart) -> None:
        """A customer whose token names them (the JWT's ``sub``) holds only their own conversations: they may
        not open one as someone else, nor resume another customer's (told apart from a missing session only
        by nothing: both are ``session_not_found``)."""
        subject = self.principal.subject
        if self.principal.role != "customer" or not subject:
            return
        if event.customer_id != subject:
            raise ProtocolError("a customer token opens sessions for its own customer id", code="forbidden")
        if event.session_id:
            row = await self.ingress.pipeline.store.get_session(self.principal.tenant, event.session_id)
            if row is not None and row.customer_id != subject:
                raise ProtocolError(
                    f"no session {event.session_id} for this tenant; omit session_id to start a new one",
                    code="session_not_found",
                )

    async def _finish(self, status: str = "disconnected") -> None:
        """Flush voice, end the session (if it still runs) and release it. Idempotent."""
        voice, self.voice = self.voice, None
        if voice is not None:
            await voice.close()  # finals of audio already received are still transcribed and stored
        state, live = self.state, self.live
        if state is not None and not state.ended:
            await self.ingress.pipeline.end_session(state, self.emit, status=status)
        if live is not None and live.deliver == self.transport.send:
            self.ingress.hub.close(live)
        if self.admitted:
            self.admitted = False
            self.ingress.pipeline.governor.leave()


class WatchConnection:
    """Staff following a session: the session so far, then each event live. The agent answers the customer
    (``chat.message``, written as the agent), sends ``suggestion.feedback``, or ends the session."""

    def __init__(self, ingress: Ingress, transport: Transport, principal: Principal, session_id: str) -> None:
        self.ingress = ingress
        self.transport = transport
        self.principal = principal
        self.session_id = session_id

    async def run(self) -> None:
        if not self.principal.may("session.watch"):
            await self.transport.send(ProtocolError("watching sessions needs an agent token", code="forbidden").to_event())
            await self.transport.close(1008, "forbidden")
            return
        hub, tenant = self.ingress.hub, self.principal.tenant
        live = hub.get(tenant, self.session_id)
        if live is None or live.ended:
            try:
                await self._replay(tenant)
            except SwitchboardError as exc:  # e.g. the store is down: say so, retryable
                await self.transport.send(exc.to_event())
                await self.transport.close(1011, exc.code)
            return
        if not await self._audited("session.watch", events=len(live.log)):
            return
        watcher = hub.watch(live)
        await self.transport.send(watcher.snapshot)

        async def forward() -> None:
            async for wire in watcher:
                await self.transport.send(wire)
            if watcher.dropped:
                await self.transport.send(
                    ErrorEvent(code="internal_error", message="this watcher fell behind; reconnect", retryable=True)
                )

        forwarder = asyncio.create_task(forward())
        try:
            await self._commands(live, forwarder)
        finally:
            hub.unwatch(live, watcher)
            if not forwarder.done():
                forwarder.cancel()
            await asyncio.gather(forwarder, return_exceptions=True)
        await self.transport.close(1000)

    async def _audited(self, action: str, **detail: Any) -> bool:
        """Record this read in the tenant's audit trail first; when that fails nothing is shown."""
        from pipelines.audit import AuditError, actor_for

        try:
            await self.ingress.audit.record(
                self.principal.tenant, actor_for(self.principal), action, self.session_id, **detail
            )
            return True
        except AuditError as exc:
            await self.transport.send(exc.to_event())
            await self.transport.close(1011, "audit unavailable")
            return False

    async def _replay(self, tenant: str) -> None:
        """An ended (or another replica's) session: its stored history."""
        store = self.ingress.store
        row = await store.get_session(tenant, self.session_id)
        if row is None:
            await self.transport.send(
                ProtocolError(f"no session {self.session_id} for this tenant", code="session_not_found").to_event()
            )
            await self.transport.close(1000)
            return
        await store.flush()
        events = await store.session_events(tenant, self.session_id)
        if not await self._audited("transcript.read", events=len(events)):
            return
        status = "live" if getattr(row, "status", "ended") == "active" else "ended"
        await self.transport.send(
            SessionSnapshot(
                session_id=row.id, channel=row.channel, customer_id=row.customer_id, status=status, events=events  # type: ignore[arg-type]
            )
        )
        await self.transport.close(1000)

    async def _commands(self, live: LiveSession, forwarder: asyncio.Task) -> None:
        pipeline, limit = self.ingress.pipeline, self.ingress.settings.max_message_bytes
        receiving = None
        while not forwarder.done():
            receiving = asyncio.ensure_future(self.transport.receive())
            done, _ = await asyncio.wait({receiving, forwarder}, return_when=asyncio.FIRST_COMPLETED)
            if receiving not in done:
                break
            frame = receiving.result()
            if frame is None:
                return
            try:
                if isinstance(frame, bytes):
                    raise ProtocolError("a watch connection carries no audio", code="unexpected_binary")
                event = parse_frame(frame, limit)
                if live.ended:
                    raise ProtocolError("this session has ended", code="session_ended")
                if isinstance(event, ChatMessage):
                    await pipeline.handle(live.state, event.model_copy(update={"speaker": "agent"}), live.emit)
                elif isinstance(event, SuggestionFeedback):
                    await pipeline.handle(live.state, event, live.emit)
                elif isinstance(event, SessionEnd):
                    await pipeline.end_session(live.state, live.emit, status="ended_by_agent")
                    self.ingress.hub.close(live)
                else:
                    raise ProtocolError(f"{event.type} is not valid on a watch connection", code="invalid_event")
            except SwitchboardError as exc:
                await self.transport.send(exc.to_event())  # to the agent only
            except Exception as exc:
                log.error("unexpected error handling a watch frame (%s)", type(exc).__name__)
                await self.transport.send(_internal_error("command"))
        if receiving is not None and not receiving.done():
            receiving.cancel()
