"""The ingress deployment: FastAPI websocket ``/v1/sessions`` (PROTOCOL.md v1) and ``/healthz``.

Thin by design: frames are translated to typed events, errors are mapped to stable codes in one place
(``_session_loop``), and everything else happens in ``pipelines.session.Pipeline``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.websockets import WebSocketDisconnect, WebSocketState

from pipelines.audio import AudioDecoder, BadAudio
from pipelines.config import Settings
from pipelines.errors import AuthError, ProtocolError, SwitchboardError
from pipelines.events import (
    CLIENT_TYPES,
    AudioFormat,
    ErrorEvent,
    SessionEnd,
    SessionStart,
    _Event,
    parse_client_event,
)
from pipelines.recordings import RecordingStore
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.session import Pipeline, SessionState
from pipelines.storage import SessionStore
from pipelines.voice import VoiceSession

from . import riva_api
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
        asr: DeploymentHandle | None = None,
        speakers: DeploymentHandle | None = None,
        generator: DeploymentHandle | None = None,
    ) -> None:
        self.settings = Settings(**settings)
        self.auth = TokenAuthority(self.settings.dev_token or "")
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
        self.store = SessionStore(self.settings.sqlalchemy_url)
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

        self.pipeline = Pipeline(
            self.ports,
            self.store,
            review,
            self.settings,
            features=self.features,
            prompt=load_prompt_template(self.settings) if generator is not None else None,
            provider=provider_name(self.settings.kb_path),
        )
        self.vad = None
        self.recordings = None
        if asr is not None:
            from models.asr.vad import SileroVad

            self.vad = SileroVad()  # the ONNX session is shared; each stream keeps its own state
            self.recordings = RecordingStore(
                self.settings.resolved_recordings_url, self.settings.resolved_recording_key_file, self.store
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
            "features": self.features.status(),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        """Which model version each text deployment serves per A/B variant (as one replica reports it;
        replicas converge within ``model_refresh_s`` of an alias move)."""
        try:
            self.auth.authenticate(
                bearer_token(request.headers.get("authorization"), request.query_params.get("token"))
            )
        except AuthError as exc:
            return JSONResponse(exc.to_event().wire(), status_code=401)
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
        try:
            principal = self.auth.authenticate(
                bearer_token(request.headers.get("authorization"), request.query_params.get("token"))
            )
        except AuthError as exc:
            return JSONResponse(exc.to_event().wire(), status_code=401)
        await self._ensure_store()
        wav = await self.recordings.read_wav(principal.tenant, session_id) if self.recordings else None
        if wav is None:
            return JSONResponse(
                ErrorEvent(code="session_not_found", message=f"no recording for session {session_id}").wire(),
                status_code=404,
            )
        return Response(wav, media_type="audio/wav")

    async def _voice_session(
        self,
        state: SessionState,
        emit: Any,
        encoding: str,
        sample_rate: int,
        channels: int,
        speakers: tuple[str | None, ...] | None = None,
    ) -> VoiceSession:
        """``speakers`` names each channel fed separately (telephony tracks); None: by channel count."""
        part = len(await self.store.recordings(state.tenant, state.session_id))
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

    # ------------------------------------------------------------ Riva-compatible gRPC (serve/riva_api.py)

    async def Recognize(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 - Riva's RPC name
        return await riva_api.recognize(self, request, grpc_context)

    async def StreamingRecognize(self, request_stream: Any, grpc_context: Any = None):  # noqa: N802
        async for response in riva_api.streaming_recognize(self, request_stream, grpc_context):
            yield response

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
        voice: VoiceSession | None = None
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
                        if voice is None:
                            raise ProtocolError(
                                f"binary audio frames are for voice sessions; this is a {state.channel} session",
                                code="unexpected_binary",
                            )
                        await voice.feed(data or b"")
                        continue
                    event = self._parse(text, limit)
                    if isinstance(event, SessionStart):
                        if state is not None:
                            raise ProtocolError(
                                "this connection already has a session", code="session_already_started"
                            )
                        if event.channel == "voice" and self.vad is None:
                            raise ProtocolError(
                                "voice is not enabled on this server (no ASR deployment); use chat, sms or email",
                                code="channel_unavailable",
                            )
                        state, started = await pipeline.start_session(tenant, event)
                        await emit(started)
                        if state.channel == "voice":
                            fmt = event.audio or AudioFormat()
                            voice = await self._voice_session(
                                state, emit, fmt.encoding, fmt.sample_rate, fmt.channels
                            )
                    elif state is None:
                        raise ProtocolError("send session.start first", code="session_not_started")
                    elif isinstance(event, SessionEnd):
                        if voice is not None:
                            await voice.close()
                            voice = None
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
            if voice is not None:
                await voice.close()  # finals of audio already received are still transcribed and stored
            if state is not None and not state.ended:
                await pipeline.end_session(state, None, status="disconnected")

    @staticmethod
    def _parse(text: str, limit: int) -> Any:
        """Text frame → client event, or the ProtocolError that names what is wrong with it."""
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
            raise ProtocolError("frame must be a JSON object with a `type` field", code="bad_json")
        if raw.get("type") not in CLIENT_TYPES:
            raise ProtocolError(
                f"unknown event type {str(raw.get('type'))[:40]!r}; expected one of {', '.join(CLIENT_TYPES)}",
                code="unknown_type",
            )
        try:
            return parse_client_event(raw)
        except ValidationError as exc:
            raise ProtocolError(_validation_message(exc), code="invalid_event") from None

    # ------------------------------------------------------------ Twilio Media Streams

    @app.websocket("/v1/twilio")
    async def twilio(self, ws: WebSocket) -> None:
        """Twilio Media Streams: `connected`, `start` (tracks, custom parameters), `media` (base64 μ-law 8 kHz
        per track), `stop`. The token comes as `?token=` on the stream URL or a `token` custom parameter.
        Analysis events are stored for the agent desktop; only errors are sent back on this socket."""
        await ws.accept()
        await self._ensure_store()
        state: SessionState | None = None
        voice: VoiceSession | None = None
        tracks: dict[str, int] = {}

        async def quiet(event: _Event) -> None:  # Twilio does not read our events; errors only
            if event.type == "error":
                await self._send(ws, event)

        async def reject(exc: SwitchboardError) -> None:
            if state is not None:
                await self.pipeline.publish(state, quiet, exc.to_event())
            else:
                await self._send(ws, exc.to_event())

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
                        principal = self.auth.authenticate(
                            ws.query_params.get("token") or params.get("token")
                        )
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
                        speakers = tuple("customer" if t == "inbound" else "agent" for t in tracks)
                        voice = await self._voice_session(state, quiet, "mulaw", 8000, 1, speakers)
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
                    await self._send(ws, exc.to_event())
                    await ws.close(code=_POLICY_VIOLATION, reason="unauthorized")
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
                await self.pipeline.end_session(state, None)
        if ws.client_state == WebSocketState.CONNECTED:
            await ws.close(code=1000)

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
