"""The ingress deployment: websocket ``/v1/sessions`` (PROTOCOL.md v1), the switchboard.v1 and Riva gRPC
services, webhooks, the agent desktop and ``/healthz``.

Thin by design: ``serve/connection.py`` translates frames (websocket JSON or gRPC protobuf) to typed events
and maps errors to stable codes in one place; everything else happens in ``pipelines.session.Pipeline``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.websockets import WebSocketDisconnect, WebSocketState

from pipelines import logs, metrics, tracing
from pipelines.audio import AudioDecoder, BadAudio
from pipelines.audit import AuditError, AuditLog, actor_for
from pipelines.channels import outbound_from_settings, parse_email, parse_inbound_sms, twiml_message
from pipelines.channels.inbox import ChannelInbox
from pipelines.channels.sms import validate_twilio_request
from pipelines.config import Settings
from pipelines.crm import crm_from_settings
from pipelines.errors import AuthError, ProtocolError, SwitchboardError
from pipelines.events import ErrorEvent, SessionStart, _Event
from pipelines.handoff import Handoff, routing_event
from pipelines.keys import encrypted_store
from pipelines.limits import TenantLimiter
from pipelines.live import LiveHub
from pipelines.recordings import RecordingStore
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.routing import Router, load_agents, routing_state
from pipelines.session import Pipeline, SessionState
from pipelines.voice import VoiceSession

from . import grpc_api, riva_api
from .auth import Principal, TokenAuthority, bearer_token
from .connection import SessionConnection, WatchConnection
from .handles import handle_ports

__all__ = ["Ingress", "app"]

log = logging.getLogger("switchboard.ingress")

app = FastAPI(
    title="switchboard", version="0.1.0", description="Real-time contact-center assist (PROTOCOL v1)"
)

_POLICY_VIOLATION = 1008


def _http_error(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse(ErrorEvent(code=code, message=message).wire(), status_code=status)
_STATIC = Path(__file__).resolve().parent / "static"


class _WsTransport:
    """A websocket as a session transport: JSON text frames and binary audio frames. A client that stops
    reading is disconnected after ``send_timeout_s`` (its session is stored and can be resumed), so it never
    holds the session's pipeline up."""

    def __init__(self, ws: WebSocket, send_timeout_s: float = 10.0) -> None:
        self.ws = ws
        self.send_timeout_s = send_timeout_s

    async def receive(self) -> str | bytes | None:
        try:
            frame = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if frame["type"] == "websocket.disconnect":
            return None
        text = frame.get("text")
        return text if text is not None else (frame.get("bytes") or b"")

    async def send(self, event: _Event | dict[str, Any]) -> None:
        if self.ws.client_state != WebSocketState.CONNECTED:
            return  # the client left; the event is already in the session's stored log
        try:
            await asyncio.wait_for(
                self.ws.send_text(json.dumps(event if isinstance(event, dict) else event.wire())),
                self.send_timeout_s,
            )
        except TimeoutError:
            log.warning("a client stopped reading for %.0f s: disconnected", self.send_timeout_s)
            await self.close(1013, "too slow: resume the session")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.ws.client_state == WebSocketState.CONNECTED:
            try:  # a peer that reads nothing cannot hold the close either
                await asyncio.wait_for(self.ws.close(code=code, reason=reason), self.send_timeout_s)
            except (TimeoutError, RuntimeError, OSError):
                pass


def _b64(payload: Any) -> bytes:
    import base64
    import binascii

    if not isinstance(payload, str) or not payload:
        raise BadAudio("`media.payload` must be base64 μ-law audio")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadAudio("`media.payload` is not valid base64") from None


# Helpers the ingress uses must be defined above it: Serve serialises the class when it is decorated.
@serve.deployment(
    name="ingress", max_ongoing_requests=12000, max_queued_requests=-1, ray_actor_options={"num_cpus": 0.2}
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
        asr: DeploymentHandle | None = None,
        speakers: DeploymentHandle | None = None,
        generator: DeploymentHandle | None = None,
    ) -> None:
        self.settings = Settings(**settings)
        logs.install(self.settings)  # JSON lines with session and trace ids (pipelines/logs.py)
        tracing.configure(self.settings)  # kept as is when Ray Serve's tracing hook installed it
        self.auth = TokenAuthority.from_settings(self.settings)  # dev tokens (local), JWTs, API keys
        self._handles = {
            "guardrail": guardrail,
            "sentiment": sentiment,
            "embedder": embedder,
            "intent": intent,
            "knowledge_base": retriever,
            **({"asr": asr} if asr is not None else {}),
            **({"speaker_embedder": speakers} if speakers is not None else {}),
            **({"response_generator": generator} if generator is not None else {}),
        }
        self.store = encrypted_store(self.settings)  # transcripts and events sealed with tenant data keys
        self.audit = AuditLog(self.store.engine)  # who read which session, transcript or recording; admin changes
        self._retention_task: asyncio.Task | None = None
        review = ReviewQueue(self.store, load_or_create_key(self.settings.resolved_review_key_file))
        self.ports = handle_ports(guardrail, sentiment, embedder, intent, retriever, asr, speakers, generator)
        from pipelines.features import FeatureClient

        # customer features for escalation priority and the post-call push; reads time out to defaults
        self.features = FeatureClient(self.settings)
        try:  # load Feast now (seconds), not on the first sessions' reads, which would miss their budget
            self.features.store()
        except Exception as exc:  # reads fall back to defaults and retry; /healthz shows it
            log.warning("feature store unavailable at start (%s): default features until it is", exc)
        from pipelines.generation import load_prompt_template
        from pipelines.indexing import provider_name

        self.hub = LiveHub()  # live sessions of this replica: customer side, watchers, desktop summaries
        s = self.settings
        self.router = Router(routing_state(s.routing_redis_url), overflow_after_s=s.routing_overflow_after_s)
        self.pipeline = Pipeline(
            self.ports,
            self.store,
            review,
            s,
            features=self.features,
            prompt=load_prompt_template(s) if generator is not None else None,
            provider=provider_name(s.kb_path),
            handoff=Handoff(self.router, self._dispatched),
            crm=None
            if s.crm == "none"
            else crm_from_settings(s.crm, base_url=s.zendesk_url, email=s.zendesk_email, api_token=s.zendesk_api_token),
        )
        # SMS and e-mail: thread keys and customer ids are keyed hashes (local mode: keyed by the dev token)
        self.channel_secret = s.channel_secret or self.auth.derived("channels")
        self.inbox = ChannelInbox(
            self.pipeline,
            self.hub,
            tenant=s.channels_tenant,
            secret=self.channel_secret,
            sms_out=outbound_from_settings("sms", s),
            email_out=outbound_from_settings("email", s),
        )
        self._background: set[asyncio.Task] = set()
        self.limiter = TenantLimiter(s.tenant_messages_per_s, s.tenant_burst)
        self.vad = None
        self.recordings = None
        if asr is not None:
            from models.asr.vad import SileroVad

            self.vad = SileroVad()  # the ONNX session is shared; each stream keeps its own state
            self.recordings = RecordingStore(
                self.settings.resolved_recordings_url,
                self.settings.resolved_recording_key_file,
                self.store,
                keyring=self.store.keyring,
            )
        self._started = asyncio.Lock()
        self._store_running = False

    @property
    def active_sessions(self) -> int:
        return self.hub.active

    async def _ensure_store(self) -> None:
        async with self._started:
            if not self._store_running:
                await self.store.start()
                await self.audit.start()
                self._store_running = True
                self._start_retention()
                await self._load_roster()
                if self.settings.imap_host:
                    self._start_imap()

    def _start_retention(self) -> None:
        """The scheduled purge of sessions past their tenant's retention (a lease: one replica at a time)."""
        interval = self.settings.retention_purge_interval_s
        if not interval:
            return
        from pipelines.retention import Retention, RetentionPolicy

        retention = Retention(
            self.store.engine,
            audit=self.audit,
            recordings=self.recordings or self.settings.resolved_recordings_url,
            policy=RetentionPolicy.from_settings(self.settings),
        )
        self._retention_task = asyncio.ensure_future(retention.run_forever(interval))

    async def _audited(self, principal: Principal, action: str, target: str, **detail: Any) -> None:
        """Record a read in the tenant's audit trail before anything is shown (raises AuditError: nothing shown)."""
        await self.audit.record(principal.tenant, actor_for(principal), action, target, **detail)

    async def _load_roster(self) -> None:
        """The agent roster file into the routing state (agents' seats in use are kept)."""
        path = self.settings.agents_file
        if path is None:
            return
        try:
            for agent in load_agents(path):
                await self.router.state.upsert_agent(agent)
        except Exception as exc:  # routing then queues or overflows; the desktop shows no agents
            log.error("agent roster %s not loaded (%s: %s)", path, type(exc).__name__, exc)

    async def _dispatched(self, tenant: str, decision: Any) -> None:
        """A waiting conversation was given to an agent who became free: tell its customer (if it is here)."""
        await self.pipeline.handoff.observe_queue(tenant, decision.queue)
        live = self.hub.get(tenant, decision.session_id)
        if live is not None and not live.ended:
            await self.pipeline.publish(live.state, live.emit, routing_event(decision))

    def _start_imap(self) -> None:
        from pipelines.channels import ImapPoller

        s = self.settings
        poller = ImapPoller(s.imap_host, 993, s.imap_user or "", s.imap_password or "", interval_s=s.imap_poll_s)
        stop = asyncio.Event()
        task = asyncio.ensure_future(poller.run(self._email_raw, stop))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _email_raw(self, raw: bytes) -> str:
        email = parse_email(raw, max_bytes=self.settings.max_email_bytes)
        return await self.inbox.email(email)

    async def __del__(self) -> None:
        if self._store_running:
            await self.store.close()

    # ------------------------------------------------------------ HTTP

    @app.get("/metrics")
    async def prometheus_metrics(self) -> Response:
        """This replica's metrics as Prometheus text (no credentials, as Prometheus expects; the labels are
        tenant, channel, model, stage, queue and error code only: no session, customer or text). The cluster's
        view is Ray's metrics port on every node (the same metrics, prefixed ``ray_``)."""
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

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
            "features": self.features.status(),
            "load": self.pipeline.governor.describe(),  # shedding, queued sessions (pipelines/overload.py)
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        """Which model version each text deployment serves per A/B variant (as one replica reports it;
        replicas converge within ``model_refresh_s`` of an alias move)."""
        principal = await self._allowed(request, "models")
        if isinstance(principal, JSONResponse):
            return principal
        names = [n for n in ("sentiment", "intent", "knowledge_base", "response_generator") if n in self._handles]
        served = await asyncio.gather(*(self._handles[n].models.remote() for n in names))
        writer = self.pipeline.writer
        return JSONResponse(
            {
                "models": dict(zip(names, served, strict=True)),
                "ab": {"mode": self.settings.ab_mode, "challenger_share": self.settings.ab_challenger_share},
                "generation": {
                    "backend": self.settings.generation_backend,
                    "prompt": writer.prompt.version,
                    "reply_cache": writer.cache.stats(),
                },
            }
        )

    @app.get("/v1/sessions/{session_id}/recording")
    async def recording(self, session_id: str, request: Request) -> Response:
        """The call's audio as WAV, decrypted for an authorised caller of the session's own tenant."""
        principal = await self._allowed(request, "recording.read")
        if isinstance(principal, JSONResponse):
            return principal
        await self._ensure_store()
        wav = await self.recordings.read_wav(principal.tenant, session_id) if self.recordings else None
        if wav is None:
            return JSONResponse(
                ErrorEvent(code="session_not_found", message=f"no recording for session {session_id}").wire(),
                status_code=404,
            )
        try:
            await self._audited(principal, "recording.read", session_id[:64], bytes=len(wav))
        except AuditError as exc:
            return JSONResponse(exc.to_event().wire(), status_code=503)
        return Response(wav, media_type="audio/wav")

    async def _voice_session(
        self,
        state: SessionState,
        emit: Any,
        encoding: str,
        sample_rate: int,
        channels: int,
        speakers: tuple[str | None, ...] | None = None,
        *,
        resumed: bool = False,
    ) -> VoiceSession:
        """``speakers`` names each channel fed separately (telephony tracks); None: by channel count. A resumed
        session's recording continues as a new part after the stored ones; a new session has none, so it does
        not wait on a store read (which, with the store busy or down, would fail the call's start)."""
        part = len(await self.store.recordings(state.tenant, state.session_id)) if resumed else 0
        channels = len(speakers) if speakers else channels
        return VoiceSession(
            self.pipeline,
            state,
            emit,
            AudioDecoder(encoding, sample_rate, channels),
            self.vad,
            self.ports.asr,
            self.ports.speakers,
            self.settings,
            recorder=self.recordings.open(state.tenant, state.session_id, channels, part),
            channel_speakers=speakers,
        )

    # ------------------------------------------------------------ switchboard.v1 gRPC (serve/grpc_api.py)

    async def Stream(self, request_stream: Any, grpc_context: Any = None):  # noqa: N802 - the RPC's name
        async for message in grpc_api.stream(self, request_stream, grpc_context):
            yield message

    async def Watch(self, request: Any, grpc_context: Any = None):  # noqa: N802
        async for message in grpc_api.watch(self, request, grpc_context):
            yield message

    # ------------------------------------------------------------ Riva-compatible gRPC (serve/riva_api.py)

    async def Recognize(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 - Riva's RPC name
        return await riva_api.recognize(self, request, grpc_context)

    async def StreamingRecognize(self, request_stream: Any, grpc_context: Any = None):  # noqa: N802
        async for response in riva_api.streaming_recognize(self, request_stream, grpc_context):
            yield response

    # ------------------------------------------------------------ websocket

    async def _principal(self, authorization: str | None, query_token: str | None) -> Principal:
        return await self.auth.authenticate_async(bearer_token(authorization, query_token))

    async def _ws_principal(self, ws: WebSocket, transport: _WsTransport, action: str) -> Principal | None:
        """The websocket's principal if it may do ``action``; otherwise the error is sent and the socket closed."""
        try:
            principal = await self._principal(ws.headers.get("authorization"), ws.query_params.get("token"))
            principal.require(action)
            return principal
        except AuthError as exc:
            metrics.count_error(exc.code, exc.retryable, None, None)
            await transport.send(exc.to_event())
            await transport.close(_POLICY_VIOLATION, exc.code)
            return None

    @app.websocket("/v1/sessions")
    async def sessions(self, ws: WebSocket) -> None:
        await ws.accept()
        transport = _WsTransport(ws, self.settings.send_timeout_s)
        principal = await self._ws_principal(ws, transport, "session.customer")
        if principal is None:
            return
        await self._ensure_store()
        await SessionConnection(self, transport, principal).run()

    @app.websocket("/v1/sessions/{session_id}/watch")
    async def watch(self, ws: WebSocket, session_id: str) -> None:
        """Follow a session (agent desktop, `switchboard tail`): `session.snapshot`, then its events live."""
        await ws.accept()
        transport = _WsTransport(ws, self.settings.send_timeout_s)
        principal = await self._ws_principal(ws, transport, "session.watch")
        if principal is None:
            return
        await self._ensure_store()
        await WatchConnection(self, transport, principal, session_id[:64]).run()

    # ------------------------------------------------------------ agent desktop, widget, staff views

    async def _allowed(self, request: Request, action: str | None) -> Principal | JSONResponse:
        """The caller's principal if its role may do ``action`` (serve/auth.py PERMISSIONS; None: any
        authenticated caller), else the 401 / 403 response with the stable error code."""
        try:
            principal = await self._principal(request.headers.get("authorization"), request.query_params.get("token"))
        except AuthError as exc:
            return JSONResponse(exc.to_event().wire(), status_code=401)
        if action is not None and not principal.may(action):
            return JSONResponse(
                ProtocolError(f"a {principal.role} token may not do this ({action})", code="forbidden")
                .to_event()
                .wire(),
                status_code=403,
            )
        return principal

    @app.get("/v1/whoami")
    async def whoami(self, request: Request) -> JSONResponse:
        principal = await self._allowed(request, None)
        if isinstance(principal, JSONResponse):
            return principal
        return JSONResponse({"tenant": principal.tenant, "role": principal.role})

    @app.get("/v1/live")
    async def live(self, request: Request) -> JSONResponse:
        """This replica's live sessions (and recently ended ones), newest first."""
        principal = await self._allowed(request, "session.watch")
        if isinstance(principal, JSONResponse):
            return principal
        return JSONResponse({"sessions": self.hub.sessions(principal.tenant)})

    @app.get("/v1/queues")
    async def queues(self, request: Request) -> JSONResponse:
        principal = await self._allowed(request, "queues")
        if isinstance(principal, JSONResponse):
            return principal
        return JSONResponse(await self.router.snapshot(principal.tenant))

    @app.post("/v1/agents/{agent_id}/status")
    async def agent_status(self, agent_id: str, request: Request) -> JSONResponse:
        """``{"status": "available" | "away" | "offline"}``; an agent becoming available takes waiting
        conversations at once (their customers get a `routing` event)."""
        principal = await self._allowed(request, "queues")
        if isinstance(principal, JSONResponse):
            return principal
        try:
            status = (await request.json()).get("status")
        except (ValueError, AttributeError):
            status = None
        if status not in ("available", "away", "offline"):
            return _http_error("invalid_event", "send {\"status\": \"available\" | \"away\" | \"offline\"}", 400)
        try:
            decisions = await self.router.set_status(principal.tenant, agent_id[:64], status)
        except KeyError:
            return _http_error("not_found", f"no agent {agent_id[:64]!r} in this tenant", 404)
        await self._audited(principal, "admin.agent_status", agent_id[:64], status=status)
        for decision in decisions:
            await self._dispatched(principal.tenant, decision)
        return JSONResponse({"agent_id": agent_id, "status": status, "assigned": [d.session_id for d in decisions]})

    # ------------------------------------------------------------ SMS and e-mail webhooks

    @app.post("/v1/sms/twilio")
    async def sms_webhook(self, request: Request) -> Response:
        """Twilio's inbound-message webhook (form post, signed with X-Twilio-Signature). Replies go out through
        the SMS adapter when an agent writes; the webhook answers with an empty TwiML response."""
        await self._ensure_store()
        body = await request.body()
        if len(body) > self.settings.max_message_bytes:
            return _http_error("message_too_large", f"webhook body over {self.settings.max_message_bytes} bytes", 413)
        form = await request.form()
        params = {k: str(v) for k, v in form.multi_items()}
        url = (self.settings.public_url.rstrip("/") + request.url.path) if self.settings.public_url else str(request.url)
        key = self.settings.twilio_auth_token or self.channel_secret
        if not validate_twilio_request(key, url, params, request.headers.get("x-twilio-signature", "")):
            return _http_error("bad_signature", "X-Twilio-Signature does not match this request", 403)
        try:
            self.limiter.check(self.settings.channels_tenant)
            session_id = await self.inbox.sms(parse_inbound_sms(params))
        except SwitchboardError as exc:
            return _http_error(exc.code, exc.message, 429 if exc.code == "rate_limited" else 400)
        return Response(twiml_message(None), media_type="application/xml", headers={"X-Session-Id": session_id})

    @app.post("/v1/email/inbound")
    async def email_webhook(self, request: Request) -> JSONResponse:
        """One raw RFC 822 message (``Content-Type: message/rfc822``) from the mail gateway, with a staff token.
        Threaded into its session by Message-ID / In-Reply-To / References; quoted history is stripped."""
        principal = await self._allowed(request, "webhook.email")
        if isinstance(principal, JSONResponse):
            return principal
        await self._ensure_store()
        raw = await request.body()
        try:
            self.limiter.check(principal.tenant)
            email = parse_email(raw, max_bytes=self.settings.max_email_bytes)
            session_id = await self.inbox.email(email)
        except SwitchboardError as exc:
            status = {"message_too_large": 413, "rate_limited": 429}.get(exc.code, 400)
            return _http_error(exc.code, exc.message, status)
        return JSONResponse(
            {"session_id": session_id, "quoted_removed": email.quoted_removed, "attachments": email.attachments},
            status_code=202,
        )

    @app.get("/desktop")
    async def desktop(self) -> Response:
        return self._static("desktop.html")

    @app.get("/widget")
    async def widget(self) -> Response:
        return self._static("widget.html")

    @app.get("/static/{name}")
    async def static(self, name: str) -> Response:
        return self._static(name)

    @staticmethod
    def _static(name: str) -> Response:
        path = (_STATIC / name).resolve()
        if path.parent != _STATIC or not path.is_file():
            return JSONResponse({"code": "not_found", "message": f"no file {name[:64]!r}"}, status_code=404)
        return FileResponse(path)

    # ------------------------------------------------------------ Twilio Media Streams

    @app.websocket("/v1/twilio")
    async def twilio(self, ws: WebSocket) -> None:
        """Twilio Media Streams: `connected`, `start` (tracks, custom parameters), `media` (base64 μ-law 8 kHz
        per track), `stop`. The token comes as `?token=` on the stream URL or a `token` custom parameter.
        Analysis events are stored for the agent desktop; only errors are sent back on this socket."""
        await ws.accept()
        await self._ensure_store()
        transport = _WsTransport(ws, self.settings.send_timeout_s)
        state: SessionState | None = None
        voice: VoiceSession | None = None
        live = None
        tracks: dict[str, int] = {}

        async def quiet(event: _Event) -> None:  # Twilio does not read our events; errors only
            if event.type == "error":
                await transport.send(event)

        async def reject(exc: SwitchboardError) -> None:
            if state is not None:
                await self.pipeline.publish(state, live.emit, exc.to_event())
            else:
                await transport.send(exc.to_event())

        try:
            while True:
                frame = await ws.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                try:
                    msg = self._twilio_message(frame.get("text"))
                    kind = msg.get("event")
                    if kind == "connected":
                        continue
                    if kind == "start":
                        if state is not None:
                            raise ProtocolError(
                                "a second `start` on one stream", code="session_already_started"
                            )
                        if self.vad is None:
                            raise ProtocolError(
                                "voice is not enabled on this server", code="channel_unavailable"
                            )
                        start = msg.get("start") or {}
                        params = start.get("customParameters") or {}
                        principal = await self.auth.authenticate_async(
                            ws.query_params.get("token") or params.get("token")
                        )
                        principal.require("webhook.voice")
                        names = [
                            t for t in (start.get("tracks") or ["inbound"]) if t in ("inbound", "outbound")
                        ]
                        tracks = {name: i for i, name in enumerate(names or ["inbound"])}
                        customer = str(params.get("customer_id") or start.get("callSid") or "twilio-caller")[
                            :128
                        ]
                        state, _ = await self.pipeline.start_session(
                            principal.tenant, SessionStart(channel="voice", customer_id=customer)
                        )
                        live = self.hub.open(state, quiet, customer_view=False)  # the desktop sees the call
                        speakers = tuple("customer" if t == "inbound" else "agent" for t in tracks)
                        voice = await self._voice_session(state, live.emit, "mulaw", 8000, 1, speakers)
                    elif kind == "media":
                        if voice is None:
                            raise ProtocolError("`media` before `start`", code="session_not_started")
                        media = msg.get("media") or {}
                        track = tracks.get(media.get("track", "inbound"))
                        if track is None:
                            raise BadAudio(f"unknown track {str(media.get('track'))[:20]!r}")
                        await voice.feed_track(track, _b64(media.get("payload")))
                    elif kind == "stop":
                        break
                    elif kind not in ("mark", "dtmf"):
                        raise ProtocolError(f"unknown Twilio event {str(kind)[:40]!r}", code="unknown_type")
                except AuthError as exc:
                    await transport.send(exc.to_event())
                    await transport.close(_POLICY_VIOLATION, "unauthorized")
                    return
                except SwitchboardError as exc:
                    await reject(exc)
                except Exception as exc:  # one bad message must not drop the call
                    log.error("unexpected error handling a Twilio message (%s)", type(exc).__name__)
                    await reject(
                        SwitchboardError("the server could not handle that message; the call continues")
                    )
        except WebSocketDisconnect:
            pass
        finally:
            if voice is not None:
                await voice.close()
            if state is not None and not state.ended:
                await self.pipeline.end_session(state, live.emit)
            if live is not None:
                self.hub.close(live)
        await transport.close(1000)

    def _twilio_message(self, text: str | None) -> dict[str, Any]:
        if text is None:
            raise BadAudio("Twilio Media Streams send JSON text frames, not binary")
        if len(text) > self.settings.max_message_bytes:
            raise ProtocolError("frame too large", code="message_too_large")
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            raise ProtocolError("frame is not valid JSON", code="bad_json") from None
        if not isinstance(msg, dict):
            raise ProtocolError("frame must be a JSON object with an `event` field", code="bad_json")
        return msg
