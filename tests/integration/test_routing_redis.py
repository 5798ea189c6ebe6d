"""Routing on the real local Redis: every routing test of tests/unit/test_routing.py again, plus races between
two replicas (two clients) and the key layout.

Uses a dedicated database (``SWITCHBOARD_TEST_ROUTING_REDIS_URL``, default ``redis://127.0.0.1:6379/15``),
a unique key prefix per test, and deletes that prefix's keys afterwards."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from pipelines.routing import RedisRoutingState, Router
from tests.unit.test_routing import (  # noqa: F401 - collected again here, on Redis
    add,
    agent,
    test_a_bumped_customer_is_served_before_earlier_normal_ones,
    test_an_agent_coming_back_takes_waiting_conversations,
    test_capacity_is_respected,
    test_concurrent_routes_never_over_assign,
    test_dequeue_serves_urgent_first_then_first_come,
    test_expected_wait_and_notice,
    test_features_bump_the_priority_one_level,
    test_finish_hands_the_freed_agent_its_next_conversation,
    test_least_loaded_first_then_agent_id,
    test_overflow_when_nobody_with_the_skill_is_online,
    test_overflow_when_the_wait_is_too_long,
    test_snapshot,
    test_tenants_never_see_each_other,
    test_the_agent_needs_the_queue_and_every_required_skill,
    test_upsert_keeps_the_live_load,
)

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("SWITCHBOARD_TEST_ROUTING_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
async def prefix():
    from redis.asyncio import Redis

    r = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await r.ping()
    except Exception as exc:
        await r.aclose()
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it (see .ci/run)")
    name = f"sb:test:{uuid.uuid4().hex[:10]}"
    yield name
    keys = [k async for k in r.scan_iter(match=f"{name}:*", count=1000)]
    if keys:
        await r.delete(*keys)
    await r.aclose()


@pytest.fixture
async def state(prefix):
    s = RedisRoutingState(REDIS_URL, prefix)
    yield s
    await s.close()


async def test_two_replicas_racing_never_over_assign(prefix) -> None:
    replicas = [RedisRoutingState(REDIS_URL, prefix) for _ in range(2)]
    try:
        await add(replicas[0], agent("a", "billing", 2), agent("b", "billing", 2))
        routers = [Router(s, overflow_after_s=10_000) for s in replicas]
        decisions = await asyncio.gather(
            *(routers[i % 2].route(f"s{i}", "acme", "billing", "normal") for i in range(20))
        )
        assert sorted(d.agent_id for d in decisions if d.assigned) == ["a", "a", "b", "b"]
        assert [a.active for a in await replicas[1].list_agents("acme")] == [2, 2]
        assert len(await replicas[1].queue_entries("acme", "billing")) == 16
        # both replicas finish and dispatch at once: every freed seat goes to a different waiting session
        done = await asyncio.gather(
            *(
                routers[i % 2].finish("acme", d.session_id, d.agent_id, 30)
                for i, d in enumerate(x for x in decisions if x.assigned)
            )
        )
        handed = [d.session_id for d in done if d is not None]
        assert len(handed) == len(set(handed)) == 4
        assert [a.active for a in await replicas[0].list_agents("acme")] == [2, 2]
        assert len(await replicas[0].queue_entries("acme", "billing")) == 12
    finally:
        for s in replicas:
            await s.close()


async def test_key_layout_carries_the_tenant(state, prefix) -> None:
    from redis.asyncio import Redis

    await add(state, agent("a", "billing", 1, "away"))
    router = Router(state, overflow_after_s=10_000)
    await router.route("s1", "acme", "billing", "urgent")
    await router.route("s2", "acme", "billing", "low")
    r = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        keys = {k async for k in r.scan_iter(match=f"{prefix}:*")}
        assert keys == {
            f"{prefix}:acme:agents",
            f"{prefix}:acme:agents:a",
            f"{prefix}:acme:queues",
            f"{prefix}:acme:queue:billing",
            f"{prefix}:acme:waiting",
        }
        assert (await r.hgetall(f"{prefix}:acme:agents:a"))["status"] == "away"
        scores = dict(await r.zrange(f"{prefix}:acme:queue:billing", 0, -1, withscores=True))
        assert 3e12 <= scores["s2"] - scores["s1"] < 3e12 + 10_000  # rank * 1e12 + ms: urgent 0, low 3
    finally:
        await r.aclose()
