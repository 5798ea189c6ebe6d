"""Speech recognition: the engine interface, Whisper backends, VAD, fallback chains and WER.

The interface (``models.asr.base``), :class:`FallbackAsr` and :func:`wer` import with numpy only; the
Whisper engines (faster-whisper, transformers) and Silero VAD (torch, onnxruntime) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.asr.base import (
    SAMPLE_RATE,
    AsrCapabilities,
    AsrEngine,
    AsrError,
    AsrUnavailable,
    Transcription,
    Word,
)
from models.asr.fallback import EngineStats, FallbackAsr
from models.asr.metrics import normalize_text, wer, word_errors

if TYPE_CHECKING:
    from models.asr.vad import SileroVad, VadEvent, VadSegmenter
    from models.asr.whisper import FasterWhisperAsr, TransformersWhisperAsr, packaged_model_path

__all__ = [
    "SAMPLE_RATE",
    "AsrCapabilities",
    "AsrEngine",
    "AsrError",
    "AsrUnavailable",
    "Transcription",
    "Word",
    "EngineStats",
    "FallbackAsr",
    "normalize_text",
    "wer",
    "word_errors",
    "FasterWhisperAsr",
    "TransformersWhisperAsr",
    "packaged_model_path",
    "SileroVad",
    "VadEvent",
    "VadSegmenter",
]

_LAZY = {
    "FasterWhisperAsr": "models.asr.whisper",
    "TransformersWhisperAsr": "models.asr.whisper",
    "packaged_model_path": "models.asr.whisper",
    "SileroVad": "models.asr.vad",
    "VadEvent": "models.asr.vad",
    "VadSegmenter": "models.asr.vad",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
