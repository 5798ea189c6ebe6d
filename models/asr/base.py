"""The ASR interface every backend implements (faster-whisper, transformers Whisper, Riva, fallback chains).

Audio is always float32 mono at 16 kHz in [-1, 1] (``SAMPLE_RATE``); decoding, channel splitting and
resampling happen before (``pipelines.audio``). Engines are synchronous and thread-safe enough to be called
from one worker thread at a time; the Serve deployment batches calls across sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "SAMPLE_RATE",
    "Word",
    "Transcription",
    "AsrCapabilities",
    "AsrEngine",
    "AsrError",
    "AsrUnavailable",
]

SAMPLE_RATE = 16000


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: float  # seconds from the start of the audio passed in
    end: float
    probability: float


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    words: tuple[Word, ...] = ()
    confidence: float = 0.0  # 0..1 (e.g. mean word probability, or exp(avg_logprob))
    model: str = ""  # backend/model name, e.g. "faster-whisper:tiny.en"
    language: str = "en"


@dataclass(frozen=True, slots=True)
class AsrCapabilities:
    streaming: bool = False  # the backend itself streams (Riva); whisper backends are called per segment
    word_timestamps: bool = True
    diarization: bool = False
    batching: bool = False  # transcribe_batch is faster than a loop of transcribe


class AsrError(RuntimeError):
    """The backend failed on this audio (retryable by a fallback chain)."""


class AsrUnavailable(AsrError):
    """The backend cannot serve at all right now (server down, model not loaded)."""


@runtime_checkable
class AsrEngine(Protocol):
    name: str
    capabilities: AsrCapabilities

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription: ...

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcription]: ...
