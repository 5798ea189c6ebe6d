"""The load governor (pipelines/overload.py): when non-critical stages are shed, and how new sessions queue with a
notice instead of failing when a replica is at capacity."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from pipelines.errors import ProtocolError
from pipelines.events import SessionQueued
from pipelines.metrics import snapshot
from pipelines.overload import LoadGovernor

pytestmark = [pytest.mark.unit]


def test_shedding_starts_at_the_in_flight_threshold_and_stops_only_well_below_it():
    g = LoadGovernor(shed_inflight_turns=4, shed_latency_ms=10_000, cooldown_s=0)
    turns = [g.turn() for _ in range(4)]
    for t in turns[:3]:
        t.__enter__()
    assert not g.shedding and not g.shed("generation", "demo", "chat")
    turns[3].__enter__()
    assert g.shedding
    before = snapshot().get("switchboard_shed{channel=chat,stage=generation,tenant=demo}", 0)
    assert g.shed("generation", "demo", "chat")
    assert snapshot()["switchboard_shed{channel=chat,stage=generation,tenant=demo}"] == before + 1
    turns[3].__exit__(None, None, None)  # 3 in flight: not below 70 % of 4 yet
    assert g.shedding
    turns[2].__exit__(None, None, None)  # 2 < 2.8
    assert not g.shedding


def test_a_slow_tail_of_the_critical_path_sheds_until_it_recovers_and_cools_down():
    now = [0.0]
    g = LoadGovernor(
        shed_inflight_turns=100,
        shed_latency_ms=400,
        window=10,
        min_samples=5,
        warmup=1,
        cooldown_s=20,
        clock=lambda: now[0],
    )
    g.observe(2_000)  # a cold replica's first turn is no sign of load
    assert not g.shedding
    for _ in range(9):
        g.observe(150)
    assert not g.shedding
    g.observe(600)  # one slow turn in ten: the 90th percentile is over the budget (a mean of 195 ms is not)
    assert g.shedding
    for _ in range(9):
        g.observe(300)  # under the threshold but not under 70 % of it
    assert g.shedding
    g.observe(300)  # the slow turn left the window: p90 300 ms, still over 280
    now[0] = 30.0
    for _ in range(10):
        g.observe(100)
    assert not g.shedding  # under 70 % and 20 s since the last slow turn
    g.observe(900)
    assert g.shedding
    now[0] = 35.0
    for _ in range(10):
        g.observe(100)
    assert g.shedding  # fast again, but only 5 s after the last slow turn: no flapping
    now[0] = 60.0
    g.observe(100)
    assert not g.shedding


def test_a_few_slow_turns_are_too_few_to_judge_the_tail_by():
    g = LoadGovernor(shed_inflight_turns=100, shed_latency_ms=400, min_samples=5, warmup=0)
    for _ in range(4):
        g.observe(900)
    assert not g.shedding
    g.observe(900)
    assert g.shedding


def test_only_non_critical_stages_are_ever_shed():
    g = LoadGovernor(shed_inflight_turns=1)
    with g.turn():
        assert g.shedding
        assert g.shed("generation", "demo", "chat")
        for critical in ("guardrail", "sentiment", "planner", "assist", "escalation"):
            assert not g.shed(critical, "demo", "chat")


async def test_a_session_over_capacity_waits_with_a_notice_and_starts_when_one_ends():
    g = LoadGovernor(max_sessions=2, queue_timeout_s=5)
    notices: list[SessionQueued] = []

    async def notify(q: SessionQueued) -> None:
        notices.append(q)

    await g.admit(notify)
    await g.admit(notify)
    assert g.sessions == 2 and not notices
    third = asyncio.create_task(g.admit(notify))
    fourth = asyncio.create_task(g.admit(notify))
    await asyncio.sleep(0.05)
    assert [(n.position, n.reason) for n in notices] == [(1, "sessions"), (2, "sessions")]
    assert not third.done() and g.describe()["queued"] == 2
    g.leave()
    await asyncio.wait_for(third, 1)  # first come, first served
    assert not fourth.done()
    g.leave()
    await asyncio.wait_for(fourth, 1)
    assert g.sessions == 2 and g.describe()["queued"] == 0


async def test_too_much_work_in_flight_queues_new_sessions_until_it_drains():
    g = LoadGovernor(admit_inflight_turns=2, shed_inflight_turns=1, queue_timeout_s=5)
    notices: list[SessionQueued] = []

    async def notify(q: SessionQueued) -> None:
        notices.append(q)

    busy = [g.turn(), g.turn()]
    for t in busy:
        t.__enter__()
    waiting = asyncio.create_task(g.admit(notify))
    await asyncio.sleep(0.05)
    assert notices and notices[0].reason == "load" and not waiting.done()
    busy[0].__exit__(None, None, None)
    await asyncio.wait_for(waiting, 1)
    assert g.sessions == 1


async def test_a_wait_that_runs_out_or_a_full_queue_is_server_busy_and_retryable():
    g = LoadGovernor(max_sessions=1, queue_max=1, queue_timeout_s=0.2)

    async def notify(q: SessionQueued) -> None:
        pass

    await g.admit(notify)
    waiting = asyncio.create_task(g.admit(notify))
    await asyncio.sleep(0.02)
    with pytest.raises(ProtocolError) as full:
        await g.admit(notify)
    assert full.value.code == "server_busy" and full.value.retryable
    with pytest.raises(ProtocolError) as late:
        await waiting
    assert late.value.code == "server_busy" and "try again" in late.value.message
    assert g.sessions == 1 and g.describe()["queued"] == 0  # nothing leaked


async def test_a_client_that_leaves_while_queued_gives_its_place_back():
    g = LoadGovernor(max_sessions=1, queue_timeout_s=5)

    async def notify(q: SessionQueued) -> None:
        pass

    await g.admit(notify)
    gone = asyncio.create_task(g.admit(notify))
    await asyncio.sleep(0.02)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert g.describe()["queued"] == 0
    g.leave()
    assert g.sessions == 0
    await asyncio.wait_for(g.admit(notify), 1)  # the next one starts at once
    assert g.sessions == 1


# ---------------------------------------------------------------- through a real session connection


class QueueTransport:
    """A client connection driven by the test: frames are put in, events come out."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue = asyncio.Queue()
        self.sent: list[dict] = []
        self.arrived = asyncio.Event()

    def put(self, event: dict) -> None:
        self.frames.put_nowait(json.dumps(event))

    async def receive(self):
        return await self.frames.get()

    async def send(self, event) -> None:
        self.sent.append(event if isinstance(event, dict) else event.wire())
        self.arrived.set()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    async def wait_for(self, type_: str, wait_s: float = 60) -> dict:
        async def seen() -> dict:
            while True:
                for e in self.sent:
                    if e["type"] == type_:
                        return e
                self.arrived.clear()
                await self.arrived.wait()

        return await asyncio.wait_for(seen(), wait_s)


async def test_a_session_queued_at_capacity_starts_when_another_ends_and_keeps_what_it_sent(settings, local_models):
    from pipelines.limits import TenantLimiter
    from pipelines.live import LiveHub
    from pipelines.review import ReviewQueue, load_or_create_key
    from pipelines.session import Pipeline
    from pipelines.storage import SessionStore
    from serve.auth import Principal
    from serve.connection import SessionConnection

    cfg = settings.model_copy(update={"max_sessions_per_replica": 1, "session_queue_timeout_s": 30})
    store = SessionStore(cfg.sqlalchemy_url)
    await store.start()
    try:
        pipeline = Pipeline(local_models, store, ReviewQueue(store, load_or_create_key(cfg.resolved_review_key_file)), cfg)
        ingress = SimpleNamespace(pipeline=pipeline, settings=cfg, hub=LiveHub(), limiter=TenantLimiter(100, 100), vad=None)
        start = {"type": "session.start", "channel": "chat", "customer_id": "c-1"}
        first, second = QueueTransport(), QueueTransport()
        a = asyncio.create_task(SessionConnection(ingress, first, Principal("demo", "agent")).run())
        first.put(start)
        await first.wait_for("session.started")
        b = asyncio.create_task(SessionConnection(ingress, second, Principal("demo", "agent")).run())
        second.put({**start, "customer_id": "c-2"})
        queued = await second.wait_for("session.queued")
        assert queued["position"] == 1 and queued["reason"] == "sessions" and "in line" in queued["notice"]
        second.put({"type": "chat.message", "text": "I was charged twice this month", "message_id": "m-waiting"})
        await asyncio.sleep(0.2)
        assert [e["type"] for e in second.sent] == ["session.queued"]  # not started, not refused
        first.put({"type": "session.end"})
        await asyncio.wait_for(a, 60)
        started = await second.wait_for("session.started")
        await second.wait_for("assist.suggestion")  # the message sent while it waited was handled
        second.put({"type": "session.end"})
        await asyncio.wait_for(b, 60)
        assert not [e for e in second.sent if e["type"] == "error"]
        stored = [u["text"] for u in await store.transcript("demo", started["session_id"])]
        assert stored == ["I was charged twice this month"]
        assert pipeline.governor.sessions == 0
    finally:
        await store.close()


def test_a_generator_busy_with_its_limit_of_replies_sheds_new_ones_without_overload():
    g = LoadGovernor(max_generations=2)
    with g.generation(), g.generation():
        assert not g.shedding  # the critical path is fine
        assert g.shed("generation", "demo", "chat")
        assert not g.shed("assist", "demo", "chat")
    assert not g.shed("generation", "demo", "chat")


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/task"), reason="per-thread nice is Linux's")
def test_the_generator_yields_the_cpu_in_every_thread_and_every_process_it_starts_later():
    """The response_generator replica lowers its own priority before vLLM spawns its engine processes: every
    thread already running (Ray's, asyncio's) and every process started afterwards runs at the lower priority."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import json, os, subprocess, sys, threading
        from serve.deployments import lower_cpu_priority
        started, stop = threading.Event(), threading.Event()
        def early():  # a thread that exists before the call, like Ray's
            started.set(); stop.wait()
        threading.Thread(target=early, daemon=True).start(); started.wait()
        assert lower_cpu_priority(0) == 0
        changed = lower_cpu_priority(12)
        tids = [int(t) for t in os.listdir("/proc/self/task")]
        nices = {os.getpriority(os.PRIO_PROCESS, t) for t in tids}
        child = subprocess.run([sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"],
                               capture_output=True, text=True, check=True).stdout.strip()
        print(json.dumps([changed, len(tids), sorted(nices), int(child), lower_cpu_priority(12)]))
        stop.set()
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    changed, threads, nices, child, again = json.loads(out.stdout.strip().splitlines()[-1])
    assert changed >= 2 and threads >= 2  # the main thread and the early one, at least
    assert nices == [12] and child == 12
    assert again == 0  # already there: nothing to change
