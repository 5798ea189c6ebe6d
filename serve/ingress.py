"""The ingress deployment: FastAPI websocket ``/v1/sessions`` (PROTOCOL.md v1) and ``/healthz``.

Thin by design: frames are translated to typed events, errors are mapped to stable codes in one place
(``_session_loop``), and everything else happens in ``pipelines.session.Pipeline``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.websockets import WebSocketDisconnect, WebSocketState

from pipelines.config import Settings
from pipelines.errors import AuthError, ProtocolError, SwitchboardError
from pipelines.events import CLIENT_TYPES, ErrorEvent, SessionEnd, SessionStart, _Event, parse_client_event
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.session import Pipeline, SessionState
from pipelines.storage import SessionStore

from .auth import TokenAuthority, bearer_token
from .handles import handle_ports

__all__ = ["Ingress", "app"]

log = logging.getLogger("switchboard.ingress")

app = FastAPI(
    title="switchboard", version="0.1.0", description="Real-time contact-center assist (PROTOCOL v1)"
)

_POLICY_VIOLATION = 1008


def _validation_message(exc: ValidationError) -> str:
    """Field locations and reasons only: pydantic's default message echoes input values, which may hold PII."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}"
        for e in exc.errors(include_input=False)
    ]
    return "invalid event: " + "; ".join(parts[:5])


@serve.deployment(
    name="ingress", max_ongoing_requests=10000, max_queued_requests=-1, ray_actor_options={"num_cpus": 0.2}
)
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        guardrail: DeploymentHandle,
        sentiment: DeploymentHandle,
        embedder: DeploymentHandle,
        intent: DeploymentHandle,
        retriever: DeploymentHandle,
        settings: dict[str, Any],
    ) -> None:
        self.settings = Settings(**settings)
        self.auth = TokenAuthority(self.settings.dev_token or "")
        self._handles = {
            "guardrail": guardrail,
            "sentiment": sentiment,
            "embedder": embedder,
            "intent": intent,
            "knowledge_base": retriever,
        }
        self.store = SessionStore(self.settings.sqlalchemy_url)
        review = ReviewQueue(self.store, load_or_create_key(self.settings.resolved_review_key_file))
        self.pipeline = Pipeline(
            handle_ports(guardrail, sentiment, embedder, intent, retriever), self.store, review, self.settings
        )
        self._started = asyncio.Lock()
        self._store_running = False
        self.active_sessions = 0

    async def _ensure_store(self) -> None:
        async with self._started:
            if not self._store_running:
                await self.store.start()
                self._store_running = True

    async def __del__(self) -> None:
        if self._store_running:
            await self.store.close()

    # ------------------------------------------------------------ HTTP

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        async def probe(name: str, handle: DeploymentHandle) -> tuple[str, str]:
            try:
                await asyncio.wait_for(handle.ready.remote(), 5.0)
                return name, "ok"
            except Exception as exc:  # reported, not raised: health is a status, not a failure
                return name, f"unavailable ({type(exc).__name__})"

        await self._ensure_store()
        results = dict(await asyncio.gather(*(probe(n, h) for n, h in self._handles.items())))
        ok = all(v == "ok" for v in results.values())
        body = {
            "status": "ok" if ok else "degraded",
            "deployments": results,
            "active_sessions": self.active_sessions,
            "store_backlog": self.store.backlog,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    # ------------------------------------------------------------ websocket

    @app.websocket("/v1/sessions")
    async def sessions(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            principal = self.auth.authenticate(
                bearer_token(ws.headers.get("authorization"), ws.query_params.get("token"))
            )
        except AuthError as exc:
            await self._send(ws, exc.to_event())
            await ws.close(code=_POLICY_VIOLATION, reason="unauthorized")
            return
        await self._ensure_store()
        self.active_sessions += 1
        try:
            await self._session_loop(ws, principal.tenant)
        finally:
            self.active_sessions -= 1

    async def _send(self, ws: WebSocket, event: _Event) -> None:
        if ws.client_state != WebSocketState.CONNECTED:
            return  # the client left; the event is already in the session's stored log
        try:
            await ws.send_text(json.dumps(event.wire()))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass

    async def _session_loop(self, ws: WebSocket, tenant: str) -> None:
        state: SessionState | None = None
        pipeline = self.pipeline
        limit = self.settings.max_message_bytes

        async def emit(event: _Event) -> None:
            await self._send(ws, event)

        async def reject(error: SwitchboardError | ErrorEvent) -> None:
            event = error if isinstance(error, ErrorEvent) else error.to_event()
            if state is not None:
                await pipeline.publish(state, emit, event)  # stored with the session too
            else:
                await emit(event)

        try:
            while True:
                frame = await ws.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                text, data = frame.get("text"), frame.get("bytes")
                try:
                    if text is None:
                        size = len(data or b"")
                        if size > limit:
                            raise ProtocolError(
                                f"binary frame of {size} bytes exceeds {limit}", code="message_too_large"
                            )
                        if state is None:
                            raise ProtocolError("send session.start before audio", code="session_not_started")
                        raise ProtocolError(
                            f"binary audio frames are for voice sessions; this is a {state.channel} session",
                            code="unexpected_binary",
                        )
                    if len(text) > limit // 4 and len(text.encode()) > limit:
                        raise ProtocolError(
                            f"text frame of {len(text.encode())} bytes exceeds the {limit}-byte limit; split the message",
                            code="message_too_large",
                        )
                    try:
                        raw = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise ProtocolError(
                            f"frame is not valid JSON ({exc.msg} at {exc.pos})", code="bad_json"
                        ) from None
                    if not isinstance(raw, dict):
                        raise ProtocolError(
                            "frame must be a JSON object with a `type` field", code="bad_json"
                        )
                    if raw.get("type") not in CLIENT_TYPES:
                        raise ProtocolError(
                            f"unknown event type {str(raw.get('type'))[:40]!r}; expected one of {', '.join(CLIENT_TYPES)}",
                            code="unknown_type",
                        )
                    try:
                        event = parse_client_event(raw)
                    except ValidationError as exc:
                        raise ProtocolError(_validation_message(exc), code="invalid_event") from None

                    if isinstance(event, SessionStart):
                        if state is not None:
                            raise ProtocolError(
                                "this connection already has a session", code="session_already_started"
                            )
                        if event.channel == "voice":
                            raise ProtocolError(
                                "voice sessions are not enabled on this server yet; use channel chat, sms or email",
                                code="channel_unavailable",
                            )
                        state, started = await pipeline.start_session(tenant, event)
                        await emit(started)
                    elif state is None:
                        raise ProtocolError("send session.start first", code="session_not_started")
                    elif isinstance(event, SessionEnd):
                        await pipeline.end_session(state, emit)
                        state = None
                        await ws.close(code=1000)
                        return
                    else:
                        await pipeline.handle(state, event, emit)
                except SwitchboardError as exc:
                    await reject(exc)
                except Exception as exc:  # never let one frame take the connection (or the server) down
                    log.error("unexpected error handling a frame (%s)", type(exc).__name__)
                    await reject(
                        ErrorEvent(
                            code="internal_error",
                            message="the server could not handle that frame; the session continues",
                            retryable=True,
                        )
                    )
        except WebSocketDisconnect:
            pass
        finally:
            if state is not None and not state.ended:
                await pipeline.end_session(state, None, status="disconnected")
