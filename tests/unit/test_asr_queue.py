"""The ASR priority queue shared by every session: finals first, newest partial per stream, workers.

The engine is the real packaged tiny.en, wrapped to record the order and overlap of its calls."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from models.asr import AsrError
from models.asr.metrics import wer
from pipelines.asr_queue import SKIPPED, AsrQueue
from pipelines.samples import synthesize

pytestmark = pytest.mark.unit

HELLO = "Good morning, I would like to pay my bill."
CLAIM = "I want to book an appointment for next Monday."


@pytest.fixture(scope="module")
def tiny():
    from models.asr.whisper import FasterWhisperAsr

    return FasterWhisperAsr.packaged("tiny.en", cpu_threads=1, num_workers=2)


@pytest.fixture(scope="module")
def audio():
    return {"hello": synthesize(HELLO), "claim": synthesize(CLAIM)}


class Recording:
    """The real engine, recording each call's audio length, start/end and how many calls overlapped."""

    def __init__(self, inner, label: str, log: list, fail: bool = False) -> None:
        self.inner, self.label, self.log, self.fail = inner, label, log, fail
        self.capabilities = inner.capabilities
        self.lock = threading.Lock()

    def transcribe_batch(self, audios):
        with self.lock:
            self.log.append(("start", self.label, time.perf_counter()))
        try:
            if self.fail:
                raise AsrError("engine down")
            return self.inner.transcribe_batch(audios)
        finally:
            with self.lock:
                self.log.append(("end", self.label, time.perf_counter()))


def overlap(log: list, label: str | None = None) -> int:
    running = peak = 0
    for kind, who, _ in sorted(log, key=lambda e: e[2]):
        if label is None or who == label:
            running += 1 if kind == "start" else -1
            peak = max(peak, running)
    return peak


async def test_finals_run_before_partials_and_a_newer_partial_supersedes_a_waiting_one(tiny, audio):
    log: list = []
    queue = AsrQueue({"final": Recording(tiny, "final", log), "partial": Recording(tiny, "partial", log)})
    first_final, stale, fresh, second_final = await asyncio.gather(
        queue.transcribe(audio["hello"], "final"),
        queue.transcribe(audio["claim"][:16000], "partial", "call-1/0"),
        queue.transcribe(audio["claim"], "partial", "call-1/0"),
        queue.transcribe(audio["claim"], "final"),
    )
    assert [label for kind, label, _ in log if kind == "start"] == ["final", "final", "partial"]
    assert stale.model == SKIPPED and stale.text == ""
    assert wer(HELLO, first_final.text) <= 0.2 and wer(CLAIM, second_final.text) <= 0.2
    assert wer(CLAIM, fresh.text) <= 0.2
    assert queue.stats == {"finals": 2, "partials": 1, "partials_skipped": 1}
    await asyncio.sleep(0)
    assert not queue._running and queue._workers_running == 0  # the worker ends when the queue is empty


async def test_partials_from_different_streams_all_run_but_expire_when_too_old(tiny, audio):
    log: list = []
    engines = {"final": Recording(tiny, "final", log), "partial": Recording(tiny, "partial", log)}
    queue = AsrQueue(engines)
    results = await asyncio.gather(
        *(queue.transcribe(audio["hello"], "partial", f"s{i}/0") for i in range(3))
    )
    assert all(wer(HELLO, r.text) <= 0.2 for r in results)
    impatient = AsrQueue(engines, partial_max_wait_s=0.0)
    final, late = await asyncio.gather(
        impatient.transcribe(audio["claim"], "final"), impatient.transcribe(audio["hello"], "partial", "s/0")
    )
    assert wer(CLAIM, final.text) <= 0.2 and late.model == SKIPPED  # it waited behind the final: too old


async def test_with_two_workers_partials_never_hold_the_last_one(tiny, audio):
    log: list = []
    queue = AsrQueue(
        {"final": Recording(tiny, "final", log), "partial": Recording(tiny, "partial", log)},
        workers=2,
        partial_max_wait_s=60.0,
    )
    partials = [queue.transcribe(audio["claim"], "partial", f"s{i}/0") for i in range(4)]
    finals = [queue.transcribe(audio["hello"], "final") for _ in range(2)]
    results = await asyncio.gather(*partials, *finals)
    assert all(wer(CLAIM, r.text) <= 0.2 for r in results[:4]) and all(
        wer(HELLO, r.text) <= 0.2 for r in results[4:]
    )
    assert overlap(log, "partial") == 1  # one worker at most on previews
    assert overlap(log) == 2  # but the second worker did run alongside


async def test_an_engine_error_reaches_its_caller_and_the_queue_keeps_serving(tiny, audio):
    log: list = []
    broken = Recording(tiny, "final", log, fail=True)
    queue = AsrQueue({"final": broken, "partial": Recording(tiny, "partial", log)})
    with pytest.raises(AsrError, match="engine down"):
        await queue.transcribe(audio["hello"], "final")
    assert wer(HELLO, (await queue.transcribe(audio["hello"], "partial", "s/0")).text) <= 0.2
    broken.fail = False
    assert wer(HELLO, (await queue.transcribe(audio["hello"], "final")).text) <= 0.2
    with pytest.raises(ValueError, match="unknown ASR role"):
        await queue.transcribe(audio["hello"], "summary")


async def test_a_caller_that_goes_away_is_not_transcribed(tiny, audio):
    log: list = []
    queue = AsrQueue({"final": Recording(tiny, "final", log), "partial": Recording(tiny, "partial", log)})
    running = asyncio.create_task(queue.transcribe(audio["hello"], "final"))
    gone = asyncio.create_task(queue.transcribe(audio["claim"], "partial", "s/0"))
    await asyncio.sleep(0.05)
    gone.cancel()
    assert wer(HELLO, (await running).text) <= 0.2
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.sleep(0.05)
    assert [label for kind, label, _ in log if kind == "start"] == ["final"]
