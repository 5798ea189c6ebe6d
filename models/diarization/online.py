"""Online speaker attribution: incremental clustering of utterance embeddings, and the resemblyzer backend.

``OnlineSpeakerClustering`` keeps one running, duration-weighted centroid per speaker of the current call. Each
finished utterance is embedded and scored against every speaker (mean cosine to the speaker's utterances, see
``_Speaker.similarity``); it joins the best speaker when the score reaches ``threshold`` and otherwise starts a
new one. Centroid updates are weighted by speech duration, so a 6 s turn counts twelve times as much as a 0.5 s
"yes". Labels are final as soon as they are emitted (nothing is relabelled afterwards).

Guards for streaming audio:

* no usable speech (silence, clicks, too short): previous label, confidence 0, nothing learnt;
* less than ``min_new_speaker_seconds`` of speech: never founds a speaker (short embeddings are noisy and
  backchannels would spawn phantom speakers); at the very start of a call it is a provisional "S1";
* ``max_speakers`` reached, or a short utterance below the threshold: joins the closest speaker with a
  confidence below 0.5 and does not move that speaker's centroid.

The similarity ``threshold`` belongs to the embedding model: ``RESEMBLYZER_THRESHOLD`` is for resemblyzer;
another embedder (e.g. customer pyannote weights) needs its own value.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from models.diarization.base import (
    SAMPLE_RATE,
    DiarizerUnavailable,
    SpeakerEmbedder,
    SpeakerEmbedding,
    as_mono_float32,
)

__all__ = [
    "RESEMBLYZER_THRESHOLD",
    "OnlineSpeakerClustering",
    "ResemblyzerEmbedder",
    "ResemblyzerDiarizer",
]

# Mean cosine similarity to a speaker's utterances at or above which a new utterance is that speaker's
# (resemblyzer embeddings). Measured here (tests/unit/test_diarization.py): same speaker 0.76-0.92 on the real
# phone call shipped with pyannote.audio and 0.81-0.89 on espeak-ng voices; a different speaker 0.64-0.83 on the
# call and 0.62-0.73 between a male and a female espeak-ng voice. Accuracy is flat for 0.70-0.74 on both sets
# and drops from 0.76 (the call's second speaker is split in two); 0.72 sits in the middle.
RESEMBLYZER_THRESHOLD = 0.72


def _label(index: int) -> str:
    return f"S{index + 1}"


@dataclass(slots=True)
class _Speaker:
    label: str
    total: np.ndarray  # duration-weighted sum of the unit embeddings absorbed
    seconds: float  # total weight: speech seconds absorbed

    def similarity(self, vector: np.ndarray) -> float:
        """Duration-weighted mean cosine between ``vector`` and this speaker's utterances.

        This is the cosine to the running centroid times the centroid's norm. The plain cosine to the
        normalised centroid is biased towards speakers with more speech (an average of many noisy embeddings
        lies closer to everybody than a single utterance does), which steals a new speaker's second turn; the
        mean cosine has the same expected value for a same-speaker utterance whatever the speaker's history.
        """
        return float(self.total @ vector) / self.seconds

    def absorb(self, emb: SpeakerEmbedding) -> None:
        self.total = self.total + emb.speech_seconds * emb.vector
        self.seconds += emb.speech_seconds


class OnlineSpeakerClustering:
    """Incremental speaker clustering for one call; implements ``Diarizer``.

    Args:
        embedder: turns an utterance into a ``SpeakerEmbedding`` (may be shared between calls). ``None`` when the
            embeddings are computed elsewhere (e.g. a shared embedding deployment) and fed to
            ``assign_embedding``; ``assign`` then raises.
        threshold: similarity (mean cosine to a speaker's utterances) at or above which an utterance is that
            speaker's. Below it for every known speaker, a new speaker is started. Embedder-specific.
        max_speakers: at most this many labels per call; once reached, every utterance joins its closest
            speaker (a two-party call: 2).
        min_new_speaker_seconds: an utterance with less speech than this never starts a new speaker once one
            exists; it joins the closest speaker with a low confidence. Short embeddings are noisy, and
            backchannels ("yes", "okay") would otherwise spawn phantom speakers.
        confidence_scale: width (in cosine units) of the logistic that maps the distance from the decision
            boundary to a confidence; 0.5 on the boundary, ~0.95 three widths away.
    """

    def __init__(
        self,
        embedder: SpeakerEmbedder | None,
        threshold: float = RESEMBLYZER_THRESHOLD,
        max_speakers: int = 8,
        *,
        min_new_speaker_seconds: float = 1.0,
        confidence_scale: float = 0.03,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
        if max_speakers < 1:
            raise ValueError(f"max_speakers must be >= 1, got {max_speakers}")
        if min_new_speaker_seconds < 0:
            raise ValueError("min_new_speaker_seconds must be >= 0")
        if confidence_scale <= 0:
            raise ValueError("confidence_scale must be > 0")
        self.embedder = embedder
        self.threshold = float(threshold)
        self.max_speakers = int(max_speakers)
        self.min_new_speaker_seconds = float(min_new_speaker_seconds)
        self.confidence_scale = float(confidence_scale)
        self._speakers: list[_Speaker] = []
        self._last: str | None = None

    # -- Diarizer ---------------------------------------------------------------------------------------------
    def assign(self, segment_audio: np.ndarray) -> tuple[str, float]:
        if self.embedder is None:
            raise TypeError("this clustering has no embedder: call assign_embedding() with embeddings")
        return self.assign_embedding(self.embedder.embed(as_mono_float32(segment_audio)))

    def reset(self) -> None:
        self._speakers = []
        self._last = None

    # -- clustering (audio-free, so it can be tested and reused with any embedder) ----------------------------
    @property
    def speakers(self) -> tuple[str, ...]:
        """Labels seen so far in this call, in order of first appearance."""
        return tuple(s.label for s in self._speakers)

    def assign_embedding(self, emb: SpeakerEmbedding | None) -> tuple[str, float]:
        """Attribute one utterance's embedding (``None``: no usable speech) and update the speaker models."""
        if emb is None or emb.speech_seconds <= 0:
            return (self._last or _label(0)), 0.0
        short = emb.speech_seconds < self.min_new_speaker_seconds
        if not self._speakers:
            if short:
                # Too little evidence to found a speaker on: provisional "S1" (a coin flip), nothing learnt.
                return self._commit(_label(0), 0.5)
            return self._commit(self._new_speaker(emb), 1.0)

        sims = np.array([s.similarity(emb.vector) for s in self._speakers])
        order = np.argsort(-sims)
        best = int(order[0])
        best_sim = float(sims[best])
        runner_up = float(sims[order[1]]) if len(sims) > 1 else -1.0

        if best_sim < self.threshold:
            can_open = len(self._speakers) < self.max_speakers
            if can_open and not short:
                return self._commit(self._new_speaker(emb), self._confidence(self.threshold - best_sim))
            # Forced to an existing speaker: report how unsure we are, and keep the centroid clean.
            return self._commit(self._speakers[best].label, self._confidence(best_sim - self.threshold))

        speaker = self._speakers[best]
        speaker.absorb(emb)
        confidence = min(
            self._confidence(best_sim - self.threshold),
            self._confidence(best_sim - runner_up),
        )
        return self._commit(speaker.label, confidence)

    # -- internals --------------------------------------------------------------------------------------------
    def _new_speaker(self, emb: SpeakerEmbedding) -> str:
        label = _label(len(self._speakers))
        self._speakers.append(_Speaker(label, emb.speech_seconds * emb.vector, emb.speech_seconds))
        return label

    def _commit(self, label: str, confidence: float) -> tuple[str, float]:
        self._last = label
        return label, float(min(1.0, max(0.0, confidence)))

    def _confidence(self, margin: float) -> float:
        return 1.0 / (1.0 + math.exp(-margin / self.confidence_scale))


class ResemblyzerEmbedder:
    """Speaker embeddings from resemblyzer's packaged 256-d voice encoder (``VoiceEncoder("cpu")``).

    resemblyzer's ``preprocess_wav`` has three traps for streaming segments, handled here by calling its two
    steps ourselves: (1) all-zero audio makes ``normalize_volume`` divide by zero and return NaNs, so near-silent
    input (RMS below ``silence_rms``) is rejected first; (2) its gain can push peaks past full scale, which
    wraps around in the int16 conversion of the VAD, so the result is clipped; (3) ``trim_long_silences``
    (webrtcvad) may keep nothing, or only a few frames, of a short or noisy segment: below
    ``min_speech_seconds`` of kept speech we return ``None`` rather than embed silence.

    ``embed_utterance`` zero-pads anything shorter than one 1.6 s partial window, which makes every short
    utterance look alike (mostly padding); shorter speech is tiled (repeated) up to 1.6 s instead.

    The encoder is stateless at inference and can be shared by all calls of a process (pass ``encoder=``).
    """

    name = "resemblyzer"

    def __init__(
        self,
        encoder: object | None = None,
        *,
        min_speech_seconds: float = 0.3,
        silence_rms: float = 1e-3,
    ) -> None:
        try:
            with warnings.catch_warnings():
                # webrtcvad imports pkg_resources and resemblyzer scipy.ndimage.morphology: both deprecated.
                warnings.simplefilter("ignore")
                from resemblyzer import VoiceEncoder, hparams
                from resemblyzer.audio import normalize_volume, trim_long_silences
        except ImportError as exc:  # pragma: no cover - resemblyzer is a core dependency
            raise DiarizerUnavailable(
                "resemblyzer is not installed: pip install resemblyzer 'setuptools<81'"
            ) from exc
        if hparams.sampling_rate != SAMPLE_RATE:  # pragma: no cover - fixed by the package
            raise DiarizerUnavailable(f"resemblyzer expects {hparams.sampling_rate} Hz audio")
        self._encoder = encoder if encoder is not None else VoiceEncoder("cpu", verbose=False)
        self._normalize_volume = normalize_volume
        self._trim_long_silences = trim_long_silences
        self._target_dbfs = hparams.audio_norm_target_dBFS
        self._partial_samples = hparams.partials_n_frames * SAMPLE_RATE * hparams.mel_window_step // 1000
        self.min_speech_seconds = float(min_speech_seconds)
        self.silence_rms = float(silence_rms)
        # One forward at a time: torch already spreads one forward over all cores, so concurrent calls from
        # several sessions' threads would only oversubscribe the CPU.
        self._lock = threading.Lock()
        # The first call pays for librosa's lazy imports (~3 s): pay it at load time, not on a live call.
        self._encoder.embed_utterance(np.zeros(self._partial_samples, dtype=np.float32))

    def embed(self, audio: np.ndarray) -> SpeakerEmbedding | None:
        wav = as_mono_float32(audio)
        if wav.size < SAMPLE_RATE * self.min_speech_seconds:
            return None
        if float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) < self.silence_rms:
            return None
        wav = self._normalize_volume(wav, self._target_dbfs, increase_only=True)
        wav = np.clip(wav, -1.0, 1.0).astype(np.float32, copy=False)
        wav = self._trim_long_silences(wav)
        speech_seconds = wav.size / SAMPLE_RATE
        if speech_seconds < self.min_speech_seconds:
            return None
        if wav.size < self._partial_samples:
            wav = np.tile(wav, -(-self._partial_samples // wav.size))[: self._partial_samples]
        with self._lock:
            vector = np.asarray(self._encoder.embed_utterance(wav), dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            return None
        return SpeakerEmbedding(vector / norm, speech_seconds)


class ResemblyzerDiarizer(OnlineSpeakerClustering):
    """Online diarizer on resemblyzer embeddings. Share one ``ResemblyzerEmbedder`` across calls."""

    def __init__(
        self,
        threshold: float = RESEMBLYZER_THRESHOLD,
        max_speakers: int = 8,
        *,
        embedder: ResemblyzerEmbedder | None = None,
        min_new_speaker_seconds: float = 1.0,
    ) -> None:
        super().__init__(
            embedder if embedder is not None else ResemblyzerEmbedder(),
            threshold,
            max_speakers,
            min_new_speaker_seconds=min_new_speaker_seconds,
        )
