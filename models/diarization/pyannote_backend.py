"""Diarization with customer-supplied pyannote.audio weights (local files only; never the model hub).

Online: ``PyannoteDiarizer`` is ``OnlineSpeakerClustering`` with a pyannote embedding model as its embedder, so
streaming behaviour (labels, guards, confidence) is identical to the resemblyzer diarizer; only the similarity
threshold differs, and it must be calibrated for the customer's model (same-speaker vs. different-speaker mean
cosine on a few of their calls; ``OnlineSpeakerClustering.assign_embedding`` makes that a loop over embeddings).

Offline (optional): ``diarize(waveform)`` runs a full pyannote ``SpeakerDiarization`` pipeline over a finished
recording when the customer also supplies a pipeline ``config.yaml``. Every model the config names must be a
local path (absolute, relative to the config file, or pyannote's ``$model/<subfolder>`` form, also resolved
against the config file's folder). ``segmentation``, ``embedding`` and ``plda`` all default to hub models in
pyannote, so a config that leaves one out is refused up front (``plda`` is required even when the clustering is
not VBx). The layout of pyannote's own pipelines works as is::

    pipeline:
      name: pyannote.audio.pipelines.SpeakerDiarization
      params:
        segmentation: $model/segmentation   # folder with pytorch_model.bin (or a path to the checkpoint file)
        embedding: $model/embedding         # folder with pytorch_model.bin
        plda: $model/plda                   # folder with xvec_transform.npz and plda.npz
        clustering: VBxClustering
    params:
      segmentation: {min_duration_off: 0.0}
      clustering: {threshold: 0.6, Fa: 0.07, Fb: 0.8}

Checkpoints are pickles (pyannote loads them with ``weights_only=False``): load only files you trust.

Installing pyannote.audio 4.0.7 from PyPI brings CUDA builds of torchaudio and torchcodec that cannot load on a
CPU torch; delete ``torchaudio/lib/*.so`` from site-packages (torchaudio then runs its pure-Python code, which
is all pyannote needs) and pass waveforms in memory (torchcodec's file decoding stays unavailable).
pyannote.audio 4 also sends usage telemetry by default: this module switches it off before importing it.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from models.diarization.base import (
    SAMPLE_RATE,
    DiarizationError,
    DiarizerUnavailable,
    SpeakerEmbedding,
    SpeakerTurn,
    as_mono_float32,
)
from models.diarization.online import OnlineSpeakerClustering

__all__ = ["PyannoteEmbedder", "PyannoteDiarizer", "load_pyannote"]

_INSTALL_HINT = (
    "pip install pyannote.audio==4.0.7, then delete site-packages/torchaudio/lib/*.so "
    "(PyPI's torchaudio is a CUDA build that cannot load on the CPU torch)"
)
_MODEL_KEYS = ("segmentation", "embedding", "plda")


def load_pyannote() -> Any:
    """Import pyannote.audio offline and without telemetry; return the module.

    Raises ``DiarizerUnavailable`` with the fix when it is not installed or torchaudio's CUDA libraries are
    still in place.
    """
    # pyannote.audio 4 exports OpenTelemetry spans on every model/pipeline load unless this is false.
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        with warnings.catch_warnings():
            # "torchcodec is not installed correctly": expected here, we only pass in-memory waveforms.
            warnings.filterwarnings("ignore", message=r"\s*torchcodec is not installed correctly")
            import pyannote.audio
            from pyannote.audio.telemetry import set_telemetry_metrics
    except ImportError as exc:
        raise DiarizerUnavailable(f"pyannote.audio is not installed: {_INSTALL_HINT}") from exc
    except OSError as exc:  # torch.ops.load_library on torchaudio's CUDA .so
        raise DiarizerUnavailable(f"pyannote.audio cannot import ({exc}): {_INSTALL_HINT}") from exc
    set_telemetry_metrics(False)
    return pyannote.audio


def _local_path(path: str | os.PathLike[str], what: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        # Never let pyannote interpret a missing path as a hub identifier.
        raise DiarizerUnavailable(f"{what} not found at {resolved} (only local paths are supported)")
    return resolved


class PyannoteEmbedder:
    """Speaker embeddings from a local pyannote.audio embedding checkpoint (``Model.from_pretrained(path)``).

    ``path`` is a ``pytorch_model.bin``/``.ckpt`` file or a folder holding ``pytorch_model.bin``. Audio with
    an RMS below ``silence_rms`` or shorter than ``min_speech_seconds`` (or than the model's receptive field)
    returns ``None``. Segments are expected to come from a VAD already, so their whole duration is the weight.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        min_speech_seconds: float = 0.5,
        silence_rms: float = 1e-3,
    ) -> None:
        load_pyannote()
        import torch
        from pyannote.audio import Model
        from pyannote.audio.pipelines.speaker_verification import PyannoteAudioPretrainedSpeakerEmbedding

        checkpoint = _local_path(path, "pyannote embedding checkpoint")
        try:
            model = Model.from_pretrained(checkpoint, map_location=torch.device(device))
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise DiarizerUnavailable(f"cannot load pyannote checkpoint {checkpoint}: {exc}") from exc
        if model is None:  # pragma: no cover - from_pretrained returns None only for hub failures
            raise DiarizerUnavailable(f"cannot load pyannote checkpoint {checkpoint}")
        self._torch = torch
        self._embedding = PyannoteAudioPretrainedSpeakerEmbedding(model, device=torch.device(device))
        self.model = self._embedding.model_
        self.name = f"pyannote:{type(self.model).__name__}"
        self.model_sample_rate = int(self._embedding.sample_rate)
        self.dimension = int(self._embedding.dimension)
        self.min_speech_seconds = float(min_speech_seconds)
        self.silence_rms = float(silence_rms)
        with warnings.catch_warnings():
            # pyannote's probe feeds ever shorter noise; statistics pooling warns on a single frame.
            warnings.simplefilter("ignore", UserWarning)
            min_model_samples = self._embedding.min_num_samples
        # Shortest input (at 16 kHz) the architecture accepts, found by pyannote's own probe.
        self._min_samples = max(
            int(self.min_speech_seconds * SAMPLE_RATE),
            int(np.ceil(min_model_samples * SAMPLE_RATE / self.model_sample_rate)),
        )
        self._lock = threading.Lock()

    def embed(self, audio: np.ndarray) -> SpeakerEmbedding | None:
        wav = as_mono_float32(audio)
        if wav.size < self._min_samples:
            return None
        if float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) < self.silence_rms:
            return None
        torch = self._torch
        waveform = torch.from_numpy(np.ascontiguousarray(wav))[None, None]
        if self.model_sample_rate != SAMPLE_RATE:
            import torchaudio.functional as taf

            waveform = taf.resample(waveform, SAMPLE_RATE, self.model_sample_rate)
        try:
            with self._lock:
                vector = np.asarray(self._embedding(waveform)[0], dtype=np.float32)
        except RuntimeError as exc:
            raise DiarizationError(
                f"{self.name} failed on a {wav.size / SAMPLE_RATE:.2f} s segment: {exc}"
            ) from exc
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            return None
        return SpeakerEmbedding(vector / norm, wav.size / SAMPLE_RATE)


class PyannoteDiarizer(OnlineSpeakerClustering):
    """Online diarizer on a customer's pyannote embedding model, plus optional offline pipeline diarization.

    Args:
        embedding_model: local path of the embedding checkpoint (file or folder), see ``PyannoteEmbedder``.
        threshold: mean-cosine threshold for *this* model; there is no universal value (calibrate it).
        max_speakers: as in ``OnlineSpeakerClustering``.
        pipeline_config: optional local ``config.yaml`` of a pyannote ``SpeakerDiarization`` pipeline, for
            ``diarize()``; loaded on first use.
        embedder: an already loaded ``PyannoteEmbedder`` to share between calls (then ``embedding_model`` may
            be ``None``).
    """

    def __init__(
        self,
        embedding_model: str | os.PathLike[str] | None,
        threshold: float,
        max_speakers: int = 8,
        *,
        pipeline_config: str | os.PathLike[str] | None = None,
        embedder: PyannoteEmbedder | None = None,
        device: str = "cpu",
        min_new_speaker_seconds: float = 1.0,
    ) -> None:
        if embedder is None:
            if embedding_model is None:
                raise ValueError("pass embedding_model (a local path) or embedder")
            embedder = PyannoteEmbedder(embedding_model, device=device)
        super().__init__(embedder, threshold, max_speakers, min_new_speaker_seconds=min_new_speaker_seconds)
        self.device = device
        self.pipeline_config = (
            _local_path(pipeline_config, "pyannote pipeline config") if pipeline_config is not None else None
        )
        self._pipeline: Any = None
        self._pipeline_lock = threading.Lock()

    def diarize(
        self,
        waveform: np.ndarray,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> list[SpeakerTurn]:
        """Diarize a whole recording (float32 mono 16 kHz) offline with the configured pyannote pipeline.

        Speakers are relabelled "S1", "S2", … in order of first appearance; overlapping turns are kept; turns
        are clipped to the recording.
        Independent of the online state (``assign``/``reset``).
        """
        wav = as_mono_float32(waveform)
        import torch

        file = {"waveform": torch.from_numpy(np.ascontiguousarray(wav))[None], "sample_rate": SAMPLE_RATE}
        try:
            with self._pipeline_lock:  # one recording at a time per diarizer; the load happens once
                pipeline = self._load_pipeline()
                output = pipeline(
                    file, num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers
                )
        except DiarizationError:
            raise
        except RuntimeError as exc:
            raise DiarizationError(f"pyannote pipeline failed: {exc}") from exc
        annotation = getattr(output, "speaker_diarization", output)  # DiarizeOutput (4.x) or Annotation
        duration = wav.size / SAMPLE_RATE
        labels: dict[str, str] = {}
        turns = []
        for segment, _track, speaker in annotation.itertracks(yield_label=True):
            # pyannote pads the last window, so a turn can run past the end of the audio: clip it.
            start, end = max(0.0, float(segment.start)), min(duration, float(segment.end))
            if end > start:
                turns.append(SpeakerTurn(start, end, labels.setdefault(speaker, f"S{len(labels) + 1}")))
        return turns

    def _load_pipeline(self) -> Any:
        if self._pipeline is not None:
            return self._pipeline
        if self.pipeline_config is None:
            raise DiarizerUnavailable(
                "offline diarize() needs pipeline_config (a local pyannote config.yaml)"
            )
        import torch
        import yaml

        load_pyannote()
        from pyannote.audio import Pipeline

        config_file = self.pipeline_config
        if config_file.is_dir():
            config_file = config_file / "config.yaml"
        with open(config_file, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
        try:
            params = config["pipeline"]["params"]
        except (KeyError, TypeError) as exc:
            raise DiarizerUnavailable(f"{config_file}: no pipeline.params section") from exc
        for key in _MODEL_KEYS:
            # Each defaults to a hub model in SpeakerDiarization, so each must be given, as a local path.
            value = params.get(key)
            if not isinstance(value, str):
                raise DiarizerUnavailable(f"{config_file}: pipeline.params.{key} must be a local path")
            path = Path(value.removeprefix("$model/")).expanduser()
            path = _local_path(path if path.is_absolute() else config_file.parent / path, f"{key} model")
            # A {"checkpoint": path} mapping loads through Model/PLDA.from_pretrained directly; a bare string
            # embedding path would be routed by its wording ("wespeaker", "speechbrain", "nvidia" in the path).
            params[key] = {"checkpoint": str(path)}
        try:
            pipeline = Pipeline.from_pretrained(config)
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise DiarizerUnavailable(
                f"cannot build the pyannote pipeline from {config_file}: {exc}"
            ) from exc
        if pipeline is None:  # pragma: no cover - only for hub failures
            raise DiarizerUnavailable(f"cannot build the pyannote pipeline from {config_file}")
        self._pipeline = pipeline.to(torch.device(self.device))
        return self._pipeline
