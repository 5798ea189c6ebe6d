"""One ASR worker shared by every session, with priorities: finals first, then the newest partial per stream.

A CPU runs one Whisper call well at a time (each call already uses every core it is given), so the order of
calls decides latency. Finals are due now (someone finished speaking and the agent is waiting); partials are
previews that age quickly. The queue therefore:

* runs finals before any partial, oldest first (in batches when the engine batches faster than it loops,
  e.g. on a GPU);
* keeps at most one waiting partial per stream key: a newer request replaces the older one, which returns an
  empty ``skipped`` transcription at once (the stream gets a fresher preview instead of a stale one);
* drops a partial that waited longer than ``partial_max_wait_s`` for the same reason.

With ``workers > 1`` (an engine that runs that many calls at once, e.g. faster-whisper with ``num_workers``)
calls run side by side, but partials never occupy more than ``workers - 1`` of them: a final never waits for
a preview to finish. Engines are synchronous; each call runs in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.asr.base import Transcription

__all__ = ["AsrQueue", "SKIPPED"]

log = logging.getLogger("switchboard.asr")

SKIPPED = "skipped"  # model name of the empty transcription a superseded or expired partial gets


@dataclass
class _Job:
    audio: np.ndarray
    future: asyncio.Future[Transcription]
    queued: float = field(default_factory=time.perf_counter)


class AsrQueue:
    """``engines`` maps a role (``final``, ``partial``) to an engine with ``transcribe_batch``."""

    def __init__(
        self,
        engines: dict[str, Any],
        *,
        workers: int = 1,
        max_batch: int = 8,
        partial_max_wait_s: float = 1.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.engines = engines
        self.workers = workers
        self.max_batch = max_batch
        self.partial_max_wait_s = partial_max_wait_s
        self._finals: deque[_Job] = deque()
        self._partials: OrderedDict[str, _Job] = OrderedDict()
        self._running: set[asyncio.Task[None]] = set()
        self._partials_running = 0
        self._workers_running = 0
        self.stats = {"finals": 0, "partials": 0, "partials_skipped": 0}

    async def transcribe(self, audio: np.ndarray, role: str, key: str | None = None) -> Transcription:
        """Queue one segment; ``key`` names the stream a partial belongs to (one waiting partial per key)."""
        if role not in self.engines:
            raise ValueError(f"unknown ASR role {role!r}: expected one of {sorted(self.engines)}")
        job = _Job(audio, asyncio.get_running_loop().create_future())
        if role == "partial":
            key = key or f"anonymous-{id(job)}"
            older = self._partials.pop(key, None)
            if older is not None:
                self._skip(older)
            self._partials[key] = job
        else:
            self._finals.append(job)
        if self._workers_running < self.workers:
            self._workers_running += 1  # counted down by the worker itself, in the step it decides to stop
            worker = asyncio.get_running_loop().create_task(self._run(), name="asr-queue")
            self._running.add(worker)  # a reference, so the task is not garbage-collected mid-call
            worker.add_done_callback(self._running.discard)
        return await job.future

    def _skip(self, job: _Job) -> None:
        self.stats["partials_skipped"] += 1
        if not job.future.done():
            job.future.set_result(Transcription(text="", model=SKIPPED))

    def _next(self) -> tuple[str, list[_Job]]:
        if self._finals:
            engine = self.engines["final"]
            take = self.max_batch if getattr(engine.capabilities, "batching", False) else 1
            return "final", [self._finals.popleft() for _ in range(min(take, len(self._finals)))]
        if self.workers > 1 and self._partials_running >= self.workers - 1:
            return "", []  # keep a worker free for the next final
        now = time.perf_counter()
        while self._partials:
            _, job = self._partials.popitem(last=False)
            if job.future.done():  # the caller went away
                continue
            if now - job.queued > self.partial_max_wait_s:
                self._skip(job)
                continue
            return "partial", [job]
        return "", []

    async def _run(self) -> None:
        try:
            await self._work()
        finally:
            self._workers_running -= 1

    async def _work(self) -> None:
        while True:  # a worker ends when there is nothing it may take; the next request starts one again
            role, jobs = self._next()
            jobs = [job for job in jobs if not job.future.done()]
            if not role:
                return
            if not jobs:
                continue
            started = time.perf_counter()
            self._partials_running += role == "partial"
            try:
                results = await asyncio.to_thread(
                    self.engines[role].transcribe_batch, [j.audio for j in jobs]
                )
            except Exception as exc:  # the caller decides (finals are retried with their audio kept)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._partials_running -= role == "partial"
            self.stats["finals" if role == "final" else "partials"] += len(jobs)
            took = time.perf_counter() - started
            for job in jobs:
                log.debug(
                    "asr %s: waited %.0f ms, ran %.0f ms on %.2f s of audio",
                    role,
                    (started - job.queued) * 1000,
                    took * 1000,
                    job.audio.size / 16000,
                )
            audio_s = sum(j.audio.size for j in jobs) / 16000
            if took > max(2.0, audio_s):
                log.warning(
                    "slow ASR call: %s of %.1f s audio took %.1f s (calls queued behind it waited)",
                    role,
                    audio_s,
                    took,
                )
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
