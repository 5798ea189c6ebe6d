"""The speaker-diarization interfaces: online attribution of finished utterances, and speaker embedders.

A call is diarized *online*: each finished utterance (one VAD/ASR segment, float32 mono 16 kHz in [-1, 1],
``SAMPLE_RATE``) is attributed to a speaker label ``"S1"``, ``"S2"``, … as soon as it ends, and that label is
never revised. Labels are per call and numbered in order of first appearance; ``reset()`` starts a new call.

Backends (resemblyzer, customer-supplied pyannote weights) differ only in their ``SpeakerEmbedder``; the
clustering that turns embeddings into labels is shared (``models.diarization.online``), so the online behaviour is
identical whichever embedder is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "SAMPLE_RATE",
    "SpeakerTurn",
    "SpeakerEmbedding",
    "Diarizer",
    "SpeakerEmbedder",
    "DiarizationError",
    "DiarizerUnavailable",
    "as_mono_float32",
]

SAMPLE_RATE = 16000


@dataclass(frozen=True, slots=True)
class SpeakerTurn:
    """One speaker's turn, in seconds from the start of the audio passed in."""

    start: float
    end: float
    speaker: str  # "S1", "S2", … for our own labels; offline pipelines may return their own names

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class SpeakerEmbedding:
    """A unit-norm speaker embedding and the amount of speech it was computed from (the evidence weight)."""

    vector: np.ndarray  # float32, shape (dim,), L2 norm 1
    speech_seconds: float


class DiarizationError(RuntimeError):
    """The diarizer failed on this audio."""


class DiarizerUnavailable(DiarizationError):
    """The diarizer cannot work at all (weights missing or unreadable, optional dependency not installed)."""


@runtime_checkable
class Diarizer(Protocol):
    """Online speaker attribution for one call at a time (not shared between concurrent calls)."""

    def assign(self, segment_audio: np.ndarray) -> tuple[str, float]:
        """Attribute one finished utterance; return its speaker label ("S1", "S2", …) and a confidence in [0, 1].

        Audio with no usable speech (silence, clicks, shorter than the embedder can handle) never raises: it
        gets the previous utterance's speaker (or "S1" at the start of a call) with confidence 0.0, and leaves
        the speaker models untouched.
        """
        ...

    def reset(self) -> None:
        """Forget all speakers: the next utterance starts a new call and is labelled "S1"."""
        ...


@runtime_checkable
class SpeakerEmbedder(Protocol):
    """Turns an utterance into a speaker embedding; stateless and safe to share between calls."""

    name: str

    def embed(self, audio: np.ndarray) -> SpeakerEmbedding | None:
        """Embed float32 mono 16 kHz audio; ``None`` when it holds too little speech to say anything."""
        ...


def as_mono_float32(audio: np.ndarray) -> np.ndarray:
    """Validate an utterance and return it as a 1-D float32 array in [-1, 1] (int16 PCM is rescaled)."""
    arr = np.asarray(audio)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"expected mono audio (1-D array), got shape {arr.shape}")
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / 32768.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected float32 or int16 audio, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError("audio contains NaN or infinite samples")
    return arr
