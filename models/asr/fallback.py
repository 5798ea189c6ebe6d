"""Fallback is composition: ``FallbackAsr([riva, whisper])`` is itself an :class:`AsrEngine`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from models.asr.base import AsrCapabilities, AsrEngine, AsrError, AsrUnavailable, Transcription

__all__ = ["EngineStats", "FallbackAsr"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EngineStats:
    calls: int = 0  # attempts (a retry is another call)
    successes: int = 0
    failures: int = 0  # attempts that raised AsrError
    last_error: str = ""


class FallbackAsr:
    """Tries each engine in order; the first result wins.

    Per engine: up to ``1 + retries`` attempts, sleeping ``backoff_s * 2**k`` (capped at ``max_backoff_s``)
    between them. An :class:`AsrUnavailable` from an engine is not retried (the backend is down, not
    flaky): the chain moves on at once. When every engine has failed, :class:`AsrUnavailable` is raised,
    chained to the last error. Only :class:`AsrError` triggers a fallback; any other exception (a bad argument,
    a bug) propagates unchanged.

    ``Transcription.model`` names the engine that produced each result (filled in if the engine left it empty).

    ``capabilities``: a flag is set only when every member has it (any member may end up answering), except
    ``batching``, which is the primary's (a batch goes to one engine at a time).

    ``stats`` maps each engine's name (suffixed ``#2``, ``#3``... when names repeat) to its :class:`EngineStats`.
    """

    def __init__(
        self,
        engines: Sequence[AsrEngine],
        *,
        retries: int = 2,
        backoff_s: float = 0.2,
        max_backoff_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        name: str | None = None,
    ) -> None:
        if not engines:
            raise ValueError("FallbackAsr needs at least one engine")
        if retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("retries, backoff_s and max_backoff_s must be >= 0")
        self.engines = list(engines)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._keys = _unique_names([engine.name for engine in self.engines])
        self.name = name or "fallback(" + ",".join(self._keys) + ")"
        caps = [engine.capabilities for engine in self.engines]
        self.capabilities = AsrCapabilities(
            streaming=all(c.streaming for c in caps),
            word_timestamps=all(c.word_timestamps for c in caps),
            diarization=all(c.diarization for c in caps),
            batching=caps[0].batching,
        )
        self._lock = threading.Lock()
        self._stats = {key: EngineStats() for key in self._keys}

    def __repr__(self) -> str:
        return f"FallbackAsr({self.engines!r}, retries={self.retries})"

    @property
    def stats(self) -> dict[str, EngineStats]:
        """A snapshot (safe to keep; later calls do not change it)."""
        with self._lock:
            return dict(self._stats)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based) of one engine."""
        return min(self.backoff_s * (2**attempt), self.max_backoff_s)

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        def call(engine: AsrEngine) -> Transcription:
            return _named(engine.transcribe(audio, prompt=prompt), engine)

        return self._run(call)

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcription]:
        def call(engine: AsrEngine) -> list[Transcription]:
            return [_named(result, engine) for result in engine.transcribe_batch(audios)]

        return self._run(call)

    def _run(self, call: Callable[[AsrEngine], T]) -> T:
        last: AsrError | None = None
        errors: dict[str, str] = {}
        for key, engine in zip(self._keys, self.engines, strict=True):
            for attempt in range(self.retries + 1):
                try:
                    result = call(engine)
                except AsrError as exc:
                    last = exc
                    errors[key] = f"{type(exc).__name__}: {exc}"
                    self._record(key, error=exc)
                    if isinstance(exc, AsrUnavailable) or attempt == self.retries:
                        break
                    self._sleep(self.backoff(attempt))
                else:
                    self._record(key)
                    return result
        summary = "; ".join(f"{key}: {message}" for key, message in errors.items())
        raise AsrUnavailable(f"every ASR engine failed ({summary})") from last

    def _record(self, key: str, error: AsrError | None = None) -> None:
        with self._lock:
            s = self._stats[key]
            if error is None:
                self._stats[key] = replace(s, calls=s.calls + 1, successes=s.successes + 1)
            else:
                message = f"{type(error).__name__}: {error}"
                self._stats[key] = replace(s, calls=s.calls + 1, failures=s.failures + 1, last_error=message)


def _named(result: Transcription, engine: AsrEngine) -> Transcription:
    return result if result.model else replace(result, model=engine.name)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys
