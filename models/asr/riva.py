"""ASR on a customer's NVIDIA Riva server (gRPC), through the stock ``nvidia-riva-client``.

``RivaAsr`` implements ``AsrEngine``: ``transcribe`` sends one utterance to ``Recognize`` (Riva's offline API) and
maps the reply to a ``Transcription``; ``stream`` drives ``StreamingRecognize`` for callers that want Riva's own
endpointing and interim results. Riva reports word offsets in milliseconds; ``Word`` carries seconds.

Errors: gRPC ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` (and our own client-side timeout) become
``AsrUnavailable`` so a ``FallbackAsr`` chain moves on; every other ``RpcError`` becomes ``AsrError``. The
original ``grpc.RpcError`` is chained as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from models.asr.base import SAMPLE_RATE, AsrCapabilities, AsrError, AsrUnavailable, Transcription, Word

if TYPE_CHECKING:
    from riva.client.proto import riva_asr_pb2 as rasr

__all__ = ["RivaAsr", "pcm16_bytes"]

# gRPC's default reconnect backoff grows to 120 s: after a long outage the channel would keep failing fast for
# up to two minutes once Riva is back. Cap it so a fallback chain sees recovery within seconds.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]

_INSTALL_HINT = "RivaAsr needs the NVIDIA Riva client: pip install nvidia-riva-client==2.28.0"


def _riva() -> Any:
    """Import ``riva.client`` on first use so the CPU install works without it."""
    try:
        import riva.client
    except ImportError as exc:  # pragma: no cover - exercised only on installs without the client
        raise ImportError(_INSTALL_HINT) from exc
    return riva.client


def pcm16_bytes(audio: np.ndarray) -> bytes:
    """Float32 mono in [-1, 1] → little-endian signed 16-bit PCM (Riva's ``LINEAR_PCM``)."""
    samples = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return (samples * 32767.0).round().astype("<i2").tobytes()


class RivaAsr:
    """An ``AsrEngine`` backed by a Riva server.

    Args:
        uri: ``host:port`` of the Riva gRPC endpoint.
        use_ssl: TLS with the system roots (or ``ssl_cert``).
        ssl_cert: path to a PEM root certificate for a private CA; implies TLS.
        metadata: extra gRPC metadata on every call, e.g. ``[("authorization", "Bearer ...")]`` for NVCF.
        language_code: BCP-47 code sent to Riva (``en-US``).
        model: a Riva model name; empty lets the server pick its default for the language.
        timeout_s: client-side deadline for one offline ``Recognize`` call.
        enable_speaker_diarization: ask Riva for a per-word ``speaker_tag`` (see ``transcribe_with_speakers``).
        max_speakers: ``max_speaker_count`` sent with diarization.
    """

    def __init__(
        self,
        uri: str,
        *,
        use_ssl: bool = False,
        ssl_cert: str | None = None,
        metadata: list[tuple[str, str]] | None = None,
        language_code: str = "en-US",
        model: str = "",
        timeout_s: float = 10.0,
        enable_speaker_diarization: bool = False,
        max_speakers: int = 2,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        riva = _riva()
        self.uri = uri
        self.language_code = language_code
        self.model = model
        self.timeout_s = timeout_s
        self.enable_speaker_diarization = enable_speaker_diarization
        self.max_speakers = max_speakers
        self.name = f"riva:{model or language_code}"
        self.capabilities = AsrCapabilities(
            streaming=True, word_timestamps=True, diarization=enable_speaker_diarization, batching=False
        )
        self._auth = riva.Auth(
            ssl_root_cert=ssl_cert,
            use_ssl=use_ssl,
            uri=uri,
            metadata_args=[[key, value] for key, value in metadata] if metadata else None,
            options=_CHANNEL_OPTIONS,
        )
        self._service = riva.ASRService(self._auth)

    # -- AsrEngine ---------------------------------------------------------------------------------------

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        """Recognize one utterance. ``prompt`` is ignored: Riva has word boosting, not free-text prompts."""
        return self.transcribe_with_speakers(audio)[0]

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcription]:
        return [self.transcribe(audio) for audio in audios]

    # -- Riva extras -------------------------------------------------------------------------------------

    def transcribe_with_speakers(self, audio: np.ndarray) -> tuple[Transcription, tuple[int, ...]]:
        """Like ``transcribe``, plus Riva's ``speaker_tag`` for each word (all 0 without diarization)."""
        if audio.size == 0:
            return Transcription(text="", model=self.name, language=self._language()), ()
        future = self._service.offline_recognize(pcm16_bytes(audio), self.recognition_config(), future=True)
        try:
            response = future.result(timeout=self.timeout_s)
        except grpc.FutureTimeoutError as exc:
            future.cancel()
            raise AsrUnavailable(
                f"Riva at {self.uri}: Recognize timed out after {self.timeout_s:g} s"
            ) from exc
        except grpc.RpcError as exc:
            raise _map_rpc_error(exc, self.uri, "Recognize") from exc
        finals = [result for result in response.results if result.alternatives]
        return self._to_transcription(finals), _speaker_tags(finals)

    def stream(self, chunks: Iterable[bytes]) -> Iterator[tuple[bool, Transcription]]:
        """Stream 16 kHz mono PCM16 chunks to ``StreamingRecognize``; yield ``(is_final, transcription)``.

        Interim hypotheses of one response are joined into one ``(False, ...)`` item; each final result is
        its own ``(True, ...)`` item, word offsets counted from the start of the stream. The call has no
        overall deadline (a stream lasts as long as the call); a dead server fails at once with
        ``AsrUnavailable``.
        """
        riva = _riva()
        streaming_config = riva.StreamingRecognitionConfig(
            config=self.recognition_config(), interim_results=True
        )
        source_errors: list[Exception] = []

        def guarded() -> Iterator[bytes]:
            # gRPC turns an exception in the request iterator into "UNKNOWN: Exception iterating requests!";
            # keep the caller's own error to re-raise it instead.
            try:
                yield from chunks
            except Exception as exc:
                source_errors.append(exc)
                raise

        responses = self._service.streaming_response_generator(
            audio_chunks=guarded(), streaming_config=streaming_config
        )
        try:
            for response in responses:
                interim = []
                for result in response.results:
                    if not result.alternatives:
                        continue
                    if result.is_final:
                        yield True, self._to_transcription([result])
                    else:
                        interim.append(result)
                if interim:
                    yield False, self._to_transcription(interim)
        except grpc.RpcError as exc:
            if source_errors:
                raise source_errors[0] from None
            raise _map_rpc_error(exc, self.uri, "StreamingRecognize") from exc
        finally:
            responses.close()

    def available_models(self) -> list[str]:
        """Model names the server reports (``GetRivaSpeechRecognitionConfig``); a cheap health probe."""
        from riva.client.proto import riva_asr_pb2 as rasr

        try:
            reply = self._service.stub.GetRivaSpeechRecognitionConfig(
                rasr.RivaSpeechRecognitionConfigRequest(),
                metadata=self._auth.get_auth_metadata(),
                timeout=self.timeout_s,
            )
        except grpc.RpcError as exc:
            raise _map_rpc_error(exc, self.uri, "GetRivaSpeechRecognitionConfig") from exc
        return [config.model_name for config in reply.model_config]

    def recognition_config(self) -> rasr.RecognitionConfig:
        """The ``RecognitionConfig`` sent with every request (16 kHz mono ``LINEAR_PCM``, word offsets on)."""
        riva = _riva()
        config = riva.RecognitionConfig(
            encoding=riva.AudioEncoding.LINEAR_PCM,
            sample_rate_hertz=SAMPLE_RATE,
            audio_channel_count=1,
            language_code=self.language_code,
            max_alternatives=1,
            enable_word_time_offsets=True,
            enable_automatic_punctuation=True,
            model=self.model,
        )
        riva.add_speaker_diarization_to_config(config, self.enable_speaker_diarization, self.max_speakers)
        return config

    def close(self) -> None:
        self._auth.channel.close()

    def __enter__(self) -> RivaAsr:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------

    def _language(self) -> str:
        return self.language_code.split("-")[0].lower() or "en"

    def _to_transcription(self, results: Sequence[Any]) -> Transcription:
        """Best alternative of each result → one ``Transcription`` (text joined, words in seconds)."""
        texts: list[str] = []
        words: list[Word] = []
        confidences: list[float] = []
        for result in results:
            best = result.alternatives[0]
            if best.transcript.strip():
                texts.append(best.transcript.strip())
            confidences.append(float(best.confidence))
            words.extend(
                Word(
                    text=info.word,
                    start=info.start_time / 1000.0,
                    end=info.end_time / 1000.0,
                    probability=float(info.confidence),
                )
                for info in best.words
            )
        confidence = float(np.mean(confidences)) if confidences else 0.0
        return Transcription(
            text=" ".join(texts),
            words=tuple(words),
            # Some Riva decoders report scores outside 0..1; the interface promises 0..1.
            confidence=min(max(confidence, 0.0), 1.0),
            model=self.name,
            language=self._language(),
        )


def _speaker_tags(results: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(info.speaker_tag) for result in results for info in result.alternatives[0].words)


def _map_rpc_error(exc: grpc.RpcError, uri: str, method: str) -> AsrError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    message = f"Riva at {uri}: {method} failed with {code.name if code else 'an RPC error'}: {details}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return AsrUnavailable(message)
    return AsrError(message)
