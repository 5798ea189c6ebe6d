"""The load governor (pipelines/overload.py): when non-critical stages are shed, and how new sessions queue with a
notice instead of failing when a replica is at capacity."""

from __future__ import annotations

import asyncio

import pytest

from pipelines.errors import ProtocolError
from pipelines.metrics import snapshot
from pipelines.overload import LoadGovernor, Queued

pytestmark = [pytest.mark.unit]


def test_shedding_starts_at_the_in_flight_threshold_and_stops_only_well_below_it():
    g = LoadGovernor(shed_inflight_turns=4, shed_latency_ms=10_000)
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


def test_a_slow_critical_path_sheds_even_with_few_turns_in_flight():
    g = LoadGovernor(shed_inflight_turns=100, shed_latency_ms=400, alpha=0.5)
    g.observe(200)
    assert not g.shedding
    g.observe(700)  # average 450
    assert g.shedding
    g.observe(300)  # 375: under the threshold but not under 70 % of it
    assert g.shedding
    g.observe(100)  # 237.5 < 280
    assert not g.shedding


def test_only_non_critical_stages_are_ever_shed():
    g = LoadGovernor(shed_inflight_turns=1)
    with g.turn():
        assert g.shedding
        assert g.shed("generation", "demo", "chat")
        for critical in ("guardrail", "sentiment", "planner", "assist", "escalation"):
            assert not g.shed(critical, "demo", "chat")


async def test_a_session_over_capacity_waits_with_a_notice_and_starts_when_one_ends():
    g = LoadGovernor(max_sessions=2, queue_timeout_s=5)
    notices: list[Queued] = []

    async def notify(q: Queued) -> None:
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
    notices: list[Queued] = []

    async def notify(q: Queued) -> None:
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

    async def notify(q: Queued) -> None:
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

    async def notify(q: Queued) -> None:
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
