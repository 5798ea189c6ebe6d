"""switchboard as an NVIDIA Riva ASR server: ``nvidia.riva.asr.RivaSpeechRecognition`` (Recognize and
StreamingRecognize with interim results, word offsets and speaker tags) served by Ray Serve's gRPC proxy, so
existing Riva clients work unchanged. Each call is a voice session like any other: the same VAD, ASR,
diarization, guardrail (transcripts are redacted) and storage.

Auth: `authorization: Bearer <token>` gRPC metadata. Errors map to gRPC status codes
(UNAUTHENTICATED, INVALID_ARGUMENT, UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING, Any

import grpc

from pipelines.audio import BadAudio
from pipelines.errors import AuthError, SwitchboardError
from pipelines.events import SessionStart, TranscriptFinal, TranscriptPartial

from . import riva_proto  # noqa: F401 - makes riva.proto.* importable for unpickling requests
from .auth import bearer_token

if TYPE_CHECKING:
    from .ingress import Ingress

__all__ = ["recognize", "streaming_recognize"]


def _pb():
    from .riva_proto import riva_asr_pb2, riva_audio_pb2  # registers the riva.proto aliases too

    return riva_asr_pb2, riva_audio_pb2


def _authenticate(ingress: Ingress, grpc_context: Any) -> str:
    metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
    token = bearer_token(metadata.get("authorization"), None)
    principal = ingress.auth.authenticate(token)
    principal.require("asr")
    return principal.tenant


def _fail(grpc_context: Any, code: grpc.StatusCode, message: str) -> None:
    if grpc_context is not None:
        grpc_context.set_code(code)
        grpc_context.set_details(message)
    raise RuntimeError(message)


def _format(config: Any, first_chunk: bytes) -> tuple[str, int, int, bytes]:
    """(encoding, sample_rate, channels, audio without a WAV header) from a RecognitionConfig."""
    _, audio_pb = _pb()
    rate = config.sample_rate_hertz or 16000
    channels = config.audio_channel_count or 1
    encoding = "mulaw" if config.encoding == audio_pb.AudioEncoding.MULAW else "pcm_s16le"
    if config.encoding not in (audio_pb.AudioEncoding.LINEAR_PCM, audio_pb.AudioEncoding.MULAW, 0):
        raise BadAudio("only LINEAR_PCM and MULAW audio are supported")
    if first_chunk.startswith(b"RIFF"):
        import wave

        data_at = first_chunk.find(b"data")
        if data_at < 0:
            raise BadAudio("a WAV header without a data chunk")
        with wave.open(io.BytesIO(first_chunk[: data_at + 8]), "rb") as w:
            rate, channels = w.getframerate(), w.getnchannels()
            encoding = "pcm_s16le" if w.getsampwidth() == 2 else encoding
        first_chunk = first_chunk[data_at + 8 :]
    return encoding, rate, channels, first_chunk


def _result(final: TranscriptFinal, channel: int, speaker_tags: bool) -> Any:
    asr_pb, _ = _pb()
    tag = 0
    if speaker_tags:
        tag = {"customer": 1, "agent": 2}.get(final.speaker) or int(final.speaker.lstrip("S") or 0)
    words = [
        asr_pb.WordInfo(
            start_time=int(w.start * 1000),
            end_time=int(w.end * 1000),
            word=w.word,
            confidence=w.confidence,
            speaker_tag=tag,
        )
        for w in final.words or []
    ]
    alternative = asr_pb.SpeechRecognitionAlternative(
        transcript=final.text, confidence=final.confidence, words=words
    )
    return alternative


class _Collector:
    """An emit target turning session events into Riva results."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def __call__(self, event: Any) -> None:
        if isinstance(event, TranscriptFinal | TranscriptPartial):
            await self.queue.put(event)


async def _run_session(
    ingress: Ingress, tenant: str, chunks: Any, config: Any, collector: _Collector
) -> None:
    """Feed Riva audio chunks through a voice session; finals and partials land in the collector."""
    first = True
    voice = state = None
    try:
        async for chunk in chunks:
            if first:
                first = False
                encoding, rate, channels, chunk = _format(config, chunk)
                if channels not in (1, 2):
                    raise BadAudio("send mono or stereo audio")
                state, _ = await ingress.pipeline.start_session(
                    tenant, SessionStart(channel="voice", customer_id="riva-client")
                )
                voice = await ingress._voice_session(state, collector, encoding, rate, channels)
            if chunk:
                await voice.feed(chunk)
    finally:
        if voice is not None:
            await voice.close()
        if state is not None:
            await ingress.pipeline.end_session(state, None)
        await collector.queue.put(None)


async def recognize(ingress: Ingress, request: Any, grpc_context: Any) -> Any:
    asr_pb, _ = _pb()
    try:
        tenant = _authenticate(ingress, grpc_context)
    except AuthError as exc:
        denied = grpc.StatusCode.PERMISSION_DENIED if exc.code == "forbidden" else grpc.StatusCode.UNAUTHENTICATED
        _fail(grpc_context, denied, exc.message)
    if ingress.vad is None:
        _fail(grpc_context, grpc.StatusCode.UNAVAILABLE, "voice is not enabled on this server")
    await ingress._ensure_store()
    config = request.config
    diarize = config.diarization_config.enable_speaker_diarization
    collector = _Collector()

    async def one_chunk():
        yield bytes(request.audio)

    try:
        await _run_session(ingress, tenant, one_chunk(), config, collector)
    except BadAudio as exc:
        _fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, exc.message)
    results = []
    while (event := collector.queue.get_nowait()) is not None:
        if isinstance(event, TranscriptFinal):
            results.append(
                asr_pb.SpeechRecognitionResult(
                    alternatives=[_result(event, 0, diarize)], channel_tag=1, audio_processed=event.end
                )
            )
    response = asr_pb.RecognizeResponse(results=results)
    if request.HasField("id"):
        response.id.CopyFrom(request.id)
    return response


async def streaming_recognize(ingress: Ingress, request_stream: Any, grpc_context: Any):
    asr_pb, _ = _pb()
    try:
        tenant = _authenticate(ingress, grpc_context)
    except AuthError as exc:
        denied = grpc.StatusCode.PERMISSION_DENIED if exc.code == "forbidden" else grpc.StatusCode.UNAUTHENTICATED
        _fail(grpc_context, denied, exc.message)
    await ingress._ensure_store()
    first = await request_stream.__anext__()
    if not first.HasField("streaming_config"):
        _fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry streaming_config")
    streaming_config = first.streaming_config
    config = streaming_config.config
    interim = streaming_config.interim_results
    diarize = config.diarization_config.enable_speaker_diarization
    collector = _Collector()

    async def chunks():
        async for req in request_stream:
            if req.audio_content:
                yield bytes(req.audio_content)

    feeder = asyncio.create_task(_run_session(ingress, tenant, chunks(), config, collector))
    try:
        while (event := await collector.queue.get()) is not None:
            if isinstance(event, TranscriptPartial):
                if not interim:
                    continue
                alt = asr_pb.SpeechRecognitionAlternative(transcript=event.text, confidence=0.0)
                result = asr_pb.StreamingRecognitionResult(
                    alternatives=[alt],
                    is_final=False,
                    stability=0.5,
                    channel_tag=1,
                    audio_processed=event.end,
                )
            else:
                result = asr_pb.StreamingRecognitionResult(
                    alternatives=[_result(event, 0, diarize)],
                    is_final=True,
                    channel_tag=1,
                    audio_processed=event.end,
                )
            yield asr_pb.StreamingRecognizeResponse(results=[result])
        await feeder
    except (BadAudio, SwitchboardError) as exc:
        _fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, exc.message)
    finally:
        if not feeder.done():
            feeder.cancel()
