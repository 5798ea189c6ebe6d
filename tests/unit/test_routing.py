"""Routing to human agents on the in-process state. The same tests run on real Redis in
tests/integration/test_routing_redis.py (they only use the ``state`` fixture)."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipelines.features import CustomerFeatures
from pipelines.routing import (
    DEFAULT_ROSTER,
    Agent,
    MemoryRoutingState,
    QueueEntry,
    RedisRoutingState,
    Router,
    RoutingDecision,
    load_agents,
    routing_state,
)

pytestmark = pytest.mark.unit


@pytest.fixture
async def state():
    s = MemoryRoutingState()
    yield s
    await s.close()


def agent(agent_id: str, skills: str, capacity: int = 2, status: str = "available", tenant: str = "acme"):
    return Agent(agent_id, tenant, agent_id.title(), frozenset(skills.split()), capacity, status)  # type: ignore[arg-type]


async def add(state, *agents: Agent) -> None:
    for a in agents:
        await state.upsert_agent(a)


async def test_the_agent_needs_the_queue_and_every_required_skill(state) -> None:
    await add(
        state, agent("tech", "technical"), agent("bill", "billing"), agent("bill-es", "billing spanish")
    )
    router = Router(state)
    d = await router.route("s1", "acme", "billing", "normal")
    assert d.agent_id == "bill" and d.assigned and not d.overflow and d.position is None
    d = await router.route("s2", "acme", "billing", "normal", required_skills=frozenset({"spanish"}))
    assert d.agent_id == "bill-es"
    d = await router.route("s3", "acme", "technical", "low")
    assert d.agent_id == "tech" and d.priority == "low"
    assert (await state.get_assignment("acme", "s3")).agent_id == "tech"


async def test_least_loaded_first_then_agent_id(state) -> None:
    await add(state, agent("b", "billing", 3), agent("a", "billing", 3), agent("away", "billing", 3, "away"))
    router = Router(state)
    assert [(await router.route(f"s{i}", "acme", "billing", "normal")).agent_id for i in range(4)] == [
        "a",
        "b",
        "a",
        "b",
    ]
    await router.finish("acme", "s1", "b", 60)  # b: 1 active, a: 2
    assert (await router.route("s9", "acme", "billing", "normal")).agent_id == "b"


async def test_capacity_is_respected(state) -> None:
    await add(state, agent("a", "billing", 1))
    router = Router(state, overflow_after_s=10_000)
    assert (await router.route("s1", "acme", "billing", "normal")).agent_id == "a"
    d = await router.route("s2", "acme", "billing", "normal")
    assert d.agent_id is None and d.position == 1 and d.expected_wait_s == 180.0 and not d.overflow
    assert (await state.get_agent("acme", "a")).active == 1
    assert not await state.try_reserve("acme", "a")


class _StaleReads(MemoryRoutingState):
    """Every route reads the roster, then yields: all of them see both agents free and race to reserve."""

    async def list_agents(self, tenant: str) -> list[Agent]:
        agents = await super().list_agents(tenant)
        await asyncio.sleep(0)
        return agents


async def test_concurrent_routes_never_over_assign(state) -> None:
    await _twenty_concurrent_routes(state)


async def test_concurrent_routes_on_stale_roster_reads_never_over_assign() -> None:
    """Every route sees both agents free (the roster read yields before reserving): the atomic reserve alone
    must keep the seats right. In-process only; Redis reruns the test above with its Lua reserve."""
    await _twenty_concurrent_routes(_StaleReads())


async def _twenty_concurrent_routes(state) -> None:
    await add(state, agent("a", "billing", 2), agent("b", "billing", 2))
    router = Router(state, overflow_after_s=10_000)
    decisions = await asyncio.gather(*(router.route(f"s{i}", "acme", "billing", "normal") for i in range(20)))
    assigned = [d for d in decisions if d.assigned]
    assert len(assigned) == 4
    assert sorted(d.agent_id for d in assigned) == ["a", "a", "b", "b"]
    assert [a.active for a in await state.list_agents("acme")] == [2, 2]
    waiting = await state.queue_entries("acme", "billing")
    assert len(waiting) == 16
    # positions are as of each enqueue (same-millisecond arrivals are ordered by session id)
    assert all(1 <= d.position <= 16 for d in decisions if not d.assigned)


async def test_dequeue_serves_urgent_first_then_first_come(state) -> None:
    t0 = time.time()
    order = [
        ("n1", "normal"),
        ("l1", "low"),
        ("u1", "urgent"),
        ("h1", "high"),
        ("n2", "normal"),
        ("u2", "urgent"),
    ]
    for i, (sid, priority) in enumerate(order):
        await state.enqueue(QueueEntry(sid, "acme", "billing", priority, t0 + i))
    assert [e.session_id for e in await state.queue_entries("acme", "billing")] == [
        "u1",
        "u2",
        "h1",
        "n1",
        "n2",
        "l1",
    ]
    # re-queueing a waiting session moves it (a session waits in one queue at most)
    assert await state.enqueue(QueueEntry("l1", "acme", "records", "low", t0)) == 1
    assert await state.queues("acme") == ["billing", "records"]
    served = []
    while (entry := await state.dequeue_next("acme", "billing")) is not None:
        served.append(entry.session_id)
    assert served == ["u1", "u2", "h1", "n1", "n2"]
    assert (await state.remove("acme", "l1")).queue == "records"
    assert await state.remove("acme", "l1") is None


async def test_overflow_when_nobody_with_the_skill_is_online(state) -> None:
    await add(state, agent("sup", "supervisor", 1), agent("legal", "legal", 1, "offline"))
    router = Router(state)
    d = await router.route("s1", "acme", "legal", "high")
    assert d.overflow and d.queue == "supervisor" and d.agent_id == "sup"
    assert "no agent with legal is online" in d.reason
    d = await router.route("s2", "acme", "clinical", "normal")  # supervisor busy now: waits there
    assert d.overflow and d.queue == "supervisor" and d.agent_id is None and d.position == 1
    assert "no agent with clinical is online" in d.reason
    assert d.notice() == (
        "All our specialists are busy, so we are passing you to a supervisor. "
        "You are number 1 in line; the expected wait is about 3 minutes."
    )


async def test_overflow_when_the_wait_is_too_long(state) -> None:
    await add(state, agent("a", "billing", 1), agent("sup", "supervisor", 1))
    router = Router(state, overflow_after_s=120, default_handle_time_s=100)
    assert (await router.route("s1", "acme", "billing", "normal")).agent_id == "a"
    d = await router.route("s2", "acme", "billing", "normal")  # position 1: ~100 s, waits
    assert not d.overflow and d.position == 1 and d.expected_wait_s == 100
    d = await router.route("s3", "acme", "billing", "normal")  # position 2: ~200 s > 120 s
    assert d.overflow and d.agent_id == "sup" and "exceeds 120s" in d.reason
    assert [e.session_id for e in await state.queue_entries("acme", "billing")] == ["s2"]
    # nobody online anywhere: the supervisor queue still takes it, without a wait estimate
    await state.set_status("acme", "sup", "offline")
    await state.set_status("acme", "a", "offline")
    d = await router.route("s4", "acme", "billing", "normal")
    assert d.overflow and d.queue == "supervisor" and d.expected_wait_s is None and d.position == 1
    assert d.notice().endswith("You are number 1 in line.")


async def test_expected_wait_and_notice(state) -> None:
    await add(state, agent("a", "billing", 1), agent("b", "billing", 1, "away"))
    router = Router(state, overflow_after_s=10_000)
    first = await router.route("s1", "acme", "billing", "normal")
    assert first.notice() == "An agent will be with you shortly."
    waits = [await router.route(f"s{i}", "acme", "billing", "normal") for i in (2, 3, 4)]
    # two agents can take billing (one is away): ceil(position / 2) * 180 s
    assert [(d.position, d.expected_wait_s) for d in waits] == [(1, 180), (2, 180), (3, 360)]
    assert waits[1].notice() == (
        "All our specialists are busy. You are number 2 in line; the expected wait is about 3 minutes."
    )
    assert "about 6 minutes" in waits[2].notice()
    for d in [first, *waits]:  # nothing about the customer or the agent
        assert d.session_id not in d.notice() and "A" not in d.notice().replace("All", "").replace("An ", "")
    await state.record_handle_time("acme", "billing", 30)
    await state.record_handle_time("acme", "billing", 50)
    assert await state.avg_handle_time("acme", "billing") == 40
    d = await router.route("s5", "acme", "billing", "normal")
    assert d.position == 4 and d.expected_wait_s == 80 and "about 2 minutes" in d.notice()
    d = await router.route("s2", "acme", "billing", "urgent")  # re-routed: moves to the head of the line
    assert d.position == 1 and "less than a minute" in d.notice()


@pytest.mark.parametrize(
    ("features", "given", "expected", "why"),
    [
        (
            CustomerFeatures(customer_lifetime_value=14250.0, source="online"),
            "normal",
            "high",
            "lifetime value",
        ),
        (
            CustomerFeatures(escalation_history_count=3, source="online"),
            "high",
            "urgent",
            "3 earlier escalations",
        ),
        (
            CustomerFeatures(customer_lifetime_value=9e9, escalation_history_count=9),
            "low",
            "normal",
            "lifetime",
        ),
        (CustomerFeatures(customer_lifetime_value=9e9), "urgent", "urgent", None),
        (
            CustomerFeatures(customer_lifetime_value=4999.0, escalation_history_count=2),
            "normal",
            "normal",
            None,
        ),
        (object(), "normal", "normal", None),
        (None, "normal", "normal", None),
    ],
)
async def test_features_bump_the_priority_one_level(state, features, given, expected, why) -> None:
    await add(state, agent("a", "billing", 1))
    d = await Router(state).route("s1", "acme", "billing", given, features=features)
    assert d.priority == expected
    if why is None:
        assert "priority" not in d.reason
    else:
        assert f"priority {given}→{expected}" in d.reason and why in d.reason


async def test_a_bumped_customer_is_served_before_earlier_normal_ones(state) -> None:
    await add(state, agent("a", "billing", 1))
    router = Router(state, overflow_after_s=10_000)
    await router.route("s1", "acme", "billing", "normal")
    await router.route("s2", "acme", "billing", "normal")
    vip = await router.route(
        "s3", "acme", "billing", "normal", features=CustomerFeatures(customer_lifetime_value=8000)
    )
    assert vip.priority == "high" and vip.position == 1
    nxt = await router.finish("acme", "s1", "a", 120)
    assert nxt.session_id == "s3" and nxt.agent_id == "a"


async def test_finish_hands_the_freed_agent_its_next_conversation(state) -> None:
    await add(state, agent("a", "billing records", 1), agent("b", "billing spanish", 1, "away"))
    router = Router(state, overflow_after_s=10_000)
    assert (await router.route("s1", "acme", "billing", "normal")).agent_id == "a"
    await router.route("s2", "acme", "billing", "normal")
    await router.route("s3", "acme", "records", "high")  # another queue a has the skill for: higher priority
    await router.route("s4", "acme", "billing", "urgent", required_skills=frozenset({"spanish"}))  # a cannot
    with pytest.raises(ValueError, match="held by agent a"):
        await router.finish("acme", "s1", "b", 10)
    nxt = await router.finish("acme", "s1", "a", 240)
    assert isinstance(nxt, RoutingDecision)
    assert (nxt.session_id, nxt.queue, nxt.priority, nxt.agent_id) == ("s3", "records", "high", "a")
    assert nxt.notice() == "An agent will be with you shortly."
    assert (await state.get_agent("acme", "a")).active == 1
    assert await state.avg_handle_time("acme", "billing") == 240
    assert await router.finish("acme", "s1", "a", 240) is None  # twice: the seat is released once
    assert (await state.get_agent("acme", "a")).active == 1
    nxt = await router.finish("acme", "s3", "a", 60)
    assert nxt.session_id == "s2"
    assert await router.finish("acme", "s2", "a", 60) is None  # only s4 waits, and a lacks spanish
    assert (await state.get_agent("acme", "a")).active == 0
    assert [e.session_id for e in await state.queue_entries("acme", "billing")] == ["s4"]


async def test_an_agent_coming_back_takes_waiting_conversations(state) -> None:
    await add(state, agent("a", "billing", 2, "away"), agent("sup", "supervisor", 0))
    router = Router(state, overflow_after_s=10_000)
    for i in range(3):
        assert not (await router.route(f"s{i}", "acme", "billing", "normal")).assigned
    decisions = await router.set_status("acme", "a", "available")
    assert [d.session_id for d in decisions] == ["s0", "s1"]
    assert [e.session_id for e in await state.queue_entries("acme", "billing")] == ["s2"]
    with pytest.raises(KeyError):
        await router.set_status("acme", "nobody", "available")


async def test_tenants_never_see_each_other(state) -> None:
    await add(
        state,
        agent("a", "billing supervisor", 1, tenant="t-a"),
        agent("shared-id", "billing", 1, tenant="t-a"),
    )
    await add(state, agent("shared-id", "records", 1, tenant="t-b"))
    router = Router(state, overflow_after_s=10_000)
    await router.route("sa1", "t-a", "billing", "normal")
    await router.route("sa2", "t-a", "billing", "normal")
    await router.route("sa3", "t-a", "billing", "normal")  # waits in t-a's billing queue
    d = await router.route("sb1", "t-b", "billing", "normal")  # t-b has no billing agent, no supervisor
    assert d.agent_id is None and d.overflow and d.queue == "supervisor"
    assert [a.agent_id for a in await state.list_agents("t-b")] == ["shared-id"]
    assert await state.get_agent("t-b", "a") is None
    assert not await state.try_reserve("t-b", "a")
    assert not await state.set_status("t-b", "a", "offline")
    await state.release("t-b", "a")
    assert (await state.get_agent("t-a", "a")).active == 1
    assert await state.queue_entries("t-b", "billing") == []
    assert await state.remove("t-b", "sa3") is None
    assert await state.dequeue_next("t-b", "billing") is None
    assert await state.get_assignment("t-b", "sa1") is None
    assert await router.finish("t-b", "sa1", "a", 10) is None
    assert (await state.get_agent("t-b", "shared-id")).skills == {"records"}  # same id, another agent
    view = await router.snapshot("t-b")
    assert [q["name"] for q in view["queues"]] == ["records", "supervisor"]
    assert all(e["session_id"] == "sb1" for q in view["queues"] for e in q["entries"])
    with pytest.raises(ValueError, match="invalid tenant"):
        await state.list_agents("t-a:agents")


async def test_snapshot(state) -> None:
    await add(
        state, agent("a", "billing", 1), agent("b", "technical", 1, "offline"), agent("s", "supervisor", 0)
    )
    router = Router(state, overflow_after_s=10_000)
    await router.route("s1", "acme", "billing", "normal")
    await router.route("s2", "acme", "billing", "urgent")
    view = await router.snapshot("acme")
    assert view["agents"][0] == {
        "agent_id": "a",
        "name": "A",
        "skills": ["billing"],
        "status": "available",
        "active": 1,
        "capacity": 1,
    }
    assert [a["status"] for a in view["agents"]] == ["available", "offline", "available"]
    queues = {q["name"]: q for q in view["queues"]}
    assert set(queues) == {"billing", "technical", "supervisor"}
    assert queues["billing"]["depth"] == 1
    (entry,) = queues["billing"]["entries"]
    assert entry["session_id"] == "s2" and entry["priority"] == "urgent" and 0 <= entry["waited_s"] < 5
    assert queues["technical"] == {"name": "technical", "depth": 0, "entries": []}


async def test_upsert_keeps_the_live_load(state) -> None:
    await add(state, agent("a", "billing", 2))
    assert await state.try_reserve("acme", "a")
    await add(state, agent("a", "billing records", 3))  # roster reload mid-shift
    a = await state.get_agent("acme", "a")
    assert a.active == 1 and a.capacity == 3 and a.skills == {"billing", "records"}


async def test_invalid_priority_is_refused(state) -> None:
    with pytest.raises(ValueError, match="unknown priority"):
        await Router(state).route("s1", "acme", "billing", "critical")  # type: ignore[arg-type]


def test_default_roster_and_state_factory() -> None:
    agents = load_agents(DEFAULT_ROSTER)
    assert {a.tenant for a in agents} == {"demo"} and 4 <= len(agents) <= 8
    skills = set().union(*(a.skills for a in agents))
    assert {"billing", "records", "technical", "general", "supervisor"} <= skills
    assert isinstance(routing_state(None), MemoryRoutingState)
    assert isinstance(routing_state("redis://127.0.0.1:6379/15"), RedisRoutingState)  # connects lazily


def test_a_bad_roster_says_what_is_wrong(tmp_path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("tenants:\n  demo:\n    - agent_id: x\n      name: X\n      skills: []\n")
    with pytest.raises(ValueError, match="skills"):
        load_agents(path)
    with pytest.raises(FileNotFoundError, match="roster"):
        load_agents(tmp_path / "missing.yaml")
