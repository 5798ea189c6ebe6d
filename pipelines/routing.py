"""Routing escalated conversations to human agents: skills, capacity, priority queues and overflow.

* :class:`Router` ``.route(...)`` assigns the least-loaded available agent whose skills cover the queue (the
  queue name is itself a skill) and the required skills, reserving one of its seats atomically; when none is
  free the conversation waits in the queue (urgent first, then first come first served) with a position and
  an expected wait, or overflows to the supervisor queue when nobody with the skill is online or the wait is
  too long. ``.finish(...)`` frees the seat and hands the agent the next conversation it can take.
* :class:`RoutingState` is the shared state behind it: :class:`MemoryRoutingState` (one process, tests) and
  :class:`RedisRoutingState` (every replica; reservations and queue moves are Lua scripts, so atomic). Every
  key carries the tenant: tenants never see each other's agents or queues.
* :func:`load_agents` reads a YAML roster (``pipelines/agents.yaml`` is the demo one).

Customer-facing text comes only from :meth:`RoutingDecision.notice`: positions and minutes, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .config import PACKAGE_DIR
from .stages.escalation import PRIORITIES, Priority

if TYPE_CHECKING:  # pragma: no cover
    from redis.asyncio import Redis

__all__ = [
    "Agent",
    "AgentStatus",
    "Assignment",
    "DEFAULT_ROSTER",
    "MemoryRoutingState",
    "QueueEntry",
    "RedisRoutingState",
    "Router",
    "RoutingDecision",
    "RoutingState",
    "load_agents",
    "routing_state",
]

log = logging.getLogger("switchboard.routing")

AgentStatus = Literal["available", "away", "offline"]
DEFAULT_ROSTER = PACKAGE_DIR / "agents.yaml"

#: customer features that raise the priority one level (either is enough; one level at most)
HIGH_LIFETIME_VALUE = 5000.0
ESCALATION_HISTORY = 3

_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # no ':' so that a tenant can never reach another's keys
_HANDLE_TIMES_KEPT = 50  # the average handle time is over the last N finished conversations of a queue


def _check_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise ValueError(f"invalid tenant {tenant!r}: letters, digits, '_', '.', '-' only")
    return tenant


def _rank(priority: Priority) -> int:
    """0 for urgent, 3 for low: the order in which queues are served."""
    return len(PRIORITIES) - 1 - PRIORITIES.index(priority)


@dataclass(slots=True)
class Agent:
    agent_id: str
    tenant: str
    name: str
    skills: frozenset[str]
    capacity: int
    status: AgentStatus
    active: int = 0  # conversations in progress

    def can_take(self, needed: frozenset[str]) -> bool:
        return self.status == "available" and self.active < self.capacity and needed <= self.skills


@dataclass(frozen=True, slots=True)
class QueueEntry:
    session_id: str
    tenant: str
    queue: str
    priority: Priority
    enqueued_at: float  # epoch seconds
    required_skills: frozenset[str] = frozenset()  # besides the queue name itself

    @property
    def score(self) -> float:
        """Sort key: urgent first, then first in first out (ms timestamps stay well under 1e12 apart)."""
        return _rank(self.priority) * 1e12 + round(self.enqueued_at * 1000)

    def to_json(self) -> str:
        return json.dumps(
            {
                "session_id": self.session_id,
                "tenant": self.tenant,
                "queue": self.queue,
                "priority": self.priority,
                "enqueued_at": self.enqueued_at,
                "required_skills": sorted(self.required_skills),
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> QueueEntry:
        d = json.loads(raw)
        return cls(**{**d, "required_skills": frozenset(d["required_skills"])})


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which agent holds a conversation (kept in the state so that any replica can finish it)."""

    session_id: str
    agent_id: str
    queue: str

    def to_json(self) -> str:
        return json.dumps({"session_id": self.session_id, "agent_id": self.agent_id, "queue": self.queue})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Assignment:
        return cls(**json.loads(raw))


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    session_id: str
    queue: str
    priority: Priority
    agent_id: str | None
    position: int | None  # 1-based place in the queue when waiting
    expected_wait_s: float | None  # None: nobody who could take it is online
    overflow: bool  # moved to the supervisor queue
    reason: str  # for agents and logs, not for the customer

    @property
    def assigned(self) -> bool:
        return self.agent_id is not None

    def notice(self) -> str:
        """What the customer is told. Only positions and minutes: never a name or anything about them."""
        if self.agent_id is not None:
            return "An agent will be with you shortly."
        busy = (
            "All our specialists are busy, so we are passing you to a supervisor."
            if self.overflow
            else "All our specialists are busy."
        )
        if self.position is None:
            return f"{busy} An agent will be with you as soon as possible."
        line = f"You are number {self.position} in line"
        if self.expected_wait_s is None:
            return f"{busy} {line}."
        return f"{busy} {line}; the expected wait is {_minutes(self.expected_wait_s)}."


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return "less than a minute"
    minutes = math.ceil(seconds / 60)
    return "about 1 minute" if minutes == 1 else f"about {minutes} minutes"


# ---------------------------------------------------------------- state


class RoutingState(ABC):
    """Agents, queues, assignments and handle times of every tenant. Implementations make
    :meth:`try_reserve`, :meth:`enqueue`, :meth:`dequeue_next`, :meth:`remove` and :meth:`pop_assignment`
    atomic: two replicas never both get the same seat or the same queued conversation."""

    @abstractmethod
    async def upsert_agent(self, agent: Agent) -> None:
        """Add or update an agent. An existing agent keeps its live ``active`` count (roster reloads mid-shift)."""

    @abstractmethod
    async def get_agent(self, tenant: str, agent_id: str) -> Agent | None: ...

    @abstractmethod
    async def list_agents(self, tenant: str) -> list[Agent]:
        """This tenant's agents, by agent_id."""

    @abstractmethod
    async def set_status(self, tenant: str, agent_id: str, status: AgentStatus) -> bool:
        """False: no such agent."""

    @abstractmethod
    async def try_reserve(self, tenant: str, agent_id: str) -> bool:
        """Take one seat: ``active += 1`` if the agent is available and below capacity, atomically."""

    @abstractmethod
    async def release(self, tenant: str, agent_id: str) -> None:
        """Give one seat back (``active`` never goes below zero)."""

    @abstractmethod
    async def enqueue(self, entry: QueueEntry) -> int:
        """Queue (or re-queue: a session waits in one queue at most); returns its 1-based position."""

    @abstractmethod
    async def dequeue_next(self, tenant: str, queue: str) -> QueueEntry | None: ...

    @abstractmethod
    async def queue_entries(self, tenant: str, queue: str) -> list[QueueEntry]:
        """In serving order."""

    @abstractmethod
    async def queues(self, tenant: str) -> list[str]:
        """Every queue this tenant has used, sorted."""

    @abstractmethod
    async def remove(self, tenant: str, session_id: str) -> QueueEntry | None:
        """Take a session out of its queue; None if it was not waiting (or another caller took it first)."""

    @abstractmethod
    async def set_assignment(self, tenant: str, assignment: Assignment) -> None: ...

    @abstractmethod
    async def get_assignment(self, tenant: str, session_id: str) -> Assignment | None: ...

    @abstractmethod
    async def pop_assignment(self, tenant: str, session_id: str) -> Assignment | None:
        """Remove and return it; a second call gets None (so a seat is released once)."""

    @abstractmethod
    async def record_handle_time(self, tenant: str, queue: str, seconds: float) -> None: ...

    @abstractmethod
    async def avg_handle_time(self, tenant: str, queue: str) -> float | None:
        """Mean of the last finished conversations of the queue; None before the first one."""

    async def close(self) -> None:  # noqa: B027 - nothing to close by default
        """Release connections."""


@dataclass
class _Tenant:
    agents: dict[str, Agent] = field(default_factory=dict)
    queues: dict[str, list[QueueEntry]] = field(default_factory=dict)  # kept sorted by score
    waiting: dict[str, QueueEntry] = field(default_factory=dict)  # session_id -> entry
    assignments: dict[str, Assignment] = field(default_factory=dict)
    handle_times: dict[str, list[float]] = field(default_factory=dict)


class MemoryRoutingState(RoutingState):
    """One process (tests, a laptop). Agents are returned as copies: only the methods change them."""

    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant] = {}
        self._lock = asyncio.Lock()

    def _t(self, tenant: str) -> _Tenant:
        return self._tenants.setdefault(_check_tenant(tenant), _Tenant())

    async def upsert_agent(self, agent: Agent) -> None:
        async with self._lock:
            agents = self._t(agent.tenant).agents
            old = agents.get(agent.agent_id)
            agents[agent.agent_id] = replace(agent, active=old.active if old else agent.active)

    async def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        agent = self._t(tenant).agents.get(agent_id)
        return replace(agent) if agent else None

    async def list_agents(self, tenant: str) -> list[Agent]:
        return [replace(a) for _, a in sorted(self._t(tenant).agents.items())]

    async def set_status(self, tenant: str, agent_id: str, status: AgentStatus) -> bool:
        async with self._lock:
            agent = self._t(tenant).agents.get(agent_id)
            if agent is None:
                return False
            agent.status = status
            return True

    async def try_reserve(self, tenant: str, agent_id: str) -> bool:
        async with self._lock:
            agent = self._t(tenant).agents.get(agent_id)
            if agent is None or agent.status != "available" or agent.active >= agent.capacity:
                return False
            agent.active += 1
            return True

    async def release(self, tenant: str, agent_id: str) -> None:
        async with self._lock:
            agent = self._t(tenant).agents.get(agent_id)
            if agent is not None and agent.active > 0:
                agent.active -= 1

    def _remove(self, t: _Tenant, session_id: str) -> QueueEntry | None:
        entry = t.waiting.pop(session_id, None)
        if entry is not None:
            t.queues[entry.queue].remove(entry)
        return entry

    async def enqueue(self, entry: QueueEntry) -> int:
        async with self._lock:
            t = self._t(entry.tenant)
            self._remove(t, entry.session_id)
            queue = t.queues.setdefault(entry.queue, [])
            queue.append(entry)
            queue.sort(key=lambda e: (e.score, e.session_id))
            t.waiting[entry.session_id] = entry
            return queue.index(entry) + 1

    async def dequeue_next(self, tenant: str, queue: str) -> QueueEntry | None:
        async with self._lock:
            t = self._t(tenant)
            entries = t.queues.get(queue)
            if not entries:
                return None
            return self._remove(t, entries[0].session_id)

    async def queue_entries(self, tenant: str, queue: str) -> list[QueueEntry]:
        return list(self._t(tenant).queues.get(queue, ()))

    async def queues(self, tenant: str) -> list[str]:
        return sorted(self._t(tenant).queues)

    async def remove(self, tenant: str, session_id: str) -> QueueEntry | None:
        async with self._lock:
            return self._remove(self._t(tenant), session_id)

    async def set_assignment(self, tenant: str, assignment: Assignment) -> None:
        self._t(tenant).assignments[assignment.session_id] = assignment

    async def get_assignment(self, tenant: str, session_id: str) -> Assignment | None:
        return self._t(tenant).assignments.get(session_id)

    async def pop_assignment(self, tenant: str, session_id: str) -> Assignment | None:
        return self._t(tenant).assignments.pop(session_id, None)

    async def record_handle_time(self, tenant: str, queue: str, seconds: float) -> None:
        times = self._t(tenant).handle_times.setdefault(queue, [])
        times.insert(0, float(seconds))
        del times[_HANDLE_TIMES_KEPT:]

    async def avg_handle_time(self, tenant: str, queue: str) -> float | None:
        times = self._t(tenant).handle_times.get(queue)
        return sum(times) / len(times) if times else None


# Lua: each script runs atomically in Redis. Queue keys are built from the tenant's key prefix (ARGV) and the
# queue name stored in the entry, so a session can be found in whichever queue it waits.
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local v = redis.call('HMGET', KEYS[1], 'status', 'active', 'capacity')
if v[1] ~= 'available' or tonumber(v[2]) >= tonumber(v[3]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'active', 1)
return 1
"""
_RELEASE = """
local active = tonumber(redis.call('HGET', KEYS[1], 'active') or '0')
if active > 0 then redis.call('HINCRBY', KEYS[1], 'active', -1) end
return active
"""
_SET_STATUS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
return 1
"""
_ENQUEUE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('ZREM', ARGV[5] .. cjson.decode(old)['queue'], ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return redis.call('ZRANK', KEYS[3], ARGV[1]) + 1
"""
_DEQUEUE = """
local popped = redis.call('ZPOPMIN', KEYS[1])
if #popped == 0 then return false end
local entry = redis.call('HGET', KEYS[2], popped[1])
redis.call('HDEL', KEYS[2], popped[1])
return entry
"""
_REMOVE = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', ARGV[2] .. cjson.decode(entry)['queue'], ARGV[1])
return entry
"""
_POP = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then redis.call('HDEL', KEYS[1], ARGV[1]) end
return v
"""


class RedisRoutingState(RoutingState):
    """Shared by every replica. Keys (``t`` = ``{prefix}:{tenant}``): ``t:agents`` (set of ids),
    ``t:agents:{id}`` (hash), ``t:queues`` (set of names), ``t:queue:{name}`` (sorted set of session ids,
    score = priority rank * 1e12 + enqueued ms), ``t:waiting`` (hash session -> entry JSON),
    ``t:assigned`` (hash session -> assignment JSON), ``t:aht:{queue}`` (list of recent handle times)."""

    def __init__(self, url: str, prefix: str = "sb:routing", *, client: Redis | None = None) -> None:
        from redis.asyncio import Redis

        self.prefix = prefix
        self._redis: Redis = client or Redis.from_url(url, decode_responses=True, socket_connect_timeout=2)
        s = self._redis.register_script
        self._reserve, self._release, self._set_status = s(_RESERVE), s(_RELEASE), s(_SET_STATUS)
        self._enqueue, self._dequeue, self._remove, self._pop = s(_ENQUEUE), s(_DEQUEUE), s(_REMOVE), s(_POP)

    def _k(self, tenant: str, *parts: str) -> str:
        return ":".join((self.prefix, _check_tenant(tenant), *parts))

    @staticmethod
    def _agent(h: dict[str, str]) -> Agent:
        return Agent(
            agent_id=h["agent_id"],
            tenant=h["tenant"],
            name=h["name"],
            skills=frozenset(json.loads(h["skills"])),
            capacity=int(h["capacity"]),
            status=h["status"],  # type: ignore[arg-type]
            active=int(h.get("active", 0)),
        )

    async def upsert_agent(self, agent: Agent) -> None:
        key = self._k(agent.tenant, "agents", agent.agent_id)
        fields = {
            "agent_id": agent.agent_id,
            "tenant": agent.tenant,
            "name": agent.name,
            "skills": json.dumps(sorted(agent.skills)),
            "capacity": agent.capacity,
            "status": agent.status,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.hsetnx(key, "active", agent.active)
            pipe.sadd(self._k(agent.tenant, "agents"), agent.agent_id)
            await pipe.execute()

    async def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        h = await self._redis.hgetall(self._k(tenant, "agents", agent_id))
        return self._agent(h) if h else None

    async def list_agents(self, tenant: str) -> list[Agent]:
        ids = sorted(await self._redis.smembers(self._k(tenant, "agents")))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for agent_id in ids:
                pipe.hgetall(self._k(tenant, "agents", agent_id))
            hashes = await pipe.execute()
        return [self._agent(h) for h in hashes if h]

    async def set_status(self, tenant: str, agent_id: str, status: AgentStatus) -> bool:
        return bool(await self._set_status(keys=[self._k(tenant, "agents", agent_id)], args=[status]))

    async def try_reserve(self, tenant: str, agent_id: str) -> bool:
        return bool(await self._reserve(keys=[self._k(tenant, "agents", agent_id)]))

    async def release(self, tenant: str, agent_id: str) -> None:
        await self._release(keys=[self._k(tenant, "agents", agent_id)])

    async def enqueue(self, entry: QueueEntry) -> int:
        t = entry.tenant
        return int(
            await self._enqueue(
                keys=[self._k(t, "waiting"), self._k(t, "queues"), self._k(t, "queue", entry.queue)],
                args=[entry.session_id, entry.to_json(), entry.score, entry.queue, self._k(t, "queue", "")],
            )
        )

    async def dequeue_next(self, tenant: str, queue: str) -> QueueEntry | None:
        raw = await self._dequeue(keys=[self._k(tenant, "queue", queue), self._k(tenant, "waiting")])
        return QueueEntry.from_json(raw) if raw else None

    async def queue_entries(self, tenant: str, queue: str) -> list[QueueEntry]:
        ids = await self._redis.zrange(self._k(tenant, "queue", queue), 0, -1)
        if not ids:
            return []
        raws = await self._redis.hmget(self._k(tenant, "waiting"), ids)
        return [QueueEntry.from_json(r) for r in raws if r]  # one taken meanwhile is skipped

    async def queues(self, tenant: str) -> list[str]:
        return sorted(await self._redis.smembers(self._k(tenant, "queues")))

    async def remove(self, tenant: str, session_id: str) -> QueueEntry | None:
        raw = await self._remove(
            keys=[self._k(tenant, "waiting")], args=[session_id, self._k(tenant, "queue", "")]
        )
        return QueueEntry.from_json(raw) if raw else None

    async def set_assignment(self, tenant: str, assignment: Assignment) -> None:
        await self._redis.hset(self._k(tenant, "assigned"), assignment.session_id, assignment.to_json())

    async def get_assignment(self, tenant: str, session_id: str) -> Assignment | None:
        raw = await self._redis.hget(self._k(tenant, "assigned"), session_id)
        return Assignment.from_json(raw) if raw else None

    async def pop_assignment(self, tenant: str, session_id: str) -> Assignment | None:
        raw = await self._pop(keys=[self._k(tenant, "assigned")], args=[session_id])
        return Assignment.from_json(raw) if raw else None

    async def record_handle_time(self, tenant: str, queue: str, seconds: float) -> None:
        key = self._k(tenant, "aht", queue)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, float(seconds))
            pipe.ltrim(key, 0, _HANDLE_TIMES_KEPT - 1)
            await pipe.execute()

    async def avg_handle_time(self, tenant: str, queue: str) -> float | None:
        times = [float(x) for x in await self._redis.lrange(self._k(tenant, "aht", queue), 0, -1)]
        return sum(times) / len(times) if times else None

    async def close(self) -> None:
        await self._redis.aclose()


def routing_state(redis_url: str | None, prefix: str = "sb:routing") -> RoutingState:
    """Redis (shared by every replica) when a URL is given, else in-process memory."""
    return RedisRoutingState(redis_url, prefix) if redis_url else MemoryRoutingState()


# ---------------------------------------------------------------- router


def bump_priority(priority: Priority, features: Any) -> tuple[Priority, str | None]:
    """One level up (normal→high, high→urgent) for a high-value customer or one who escalated often."""
    if features is None:
        return priority, None
    why = []
    clv = getattr(features, "customer_lifetime_value", None)
    if clv is not None and clv >= HIGH_LIFETIME_VALUE:
        why.append(f"lifetime value >= {HIGH_LIFETIME_VALUE:g}")
    history = getattr(features, "escalation_history_count", None)
    if history is not None and history >= ESCALATION_HISTORY:
        why.append(f"{history} earlier escalations")
    if not why or priority == "urgent":
        return priority, None
    bumped = PRIORITIES[PRIORITIES.index(priority) + 1]
    return bumped, f"priority {priority}→{bumped} ({', '.join(why)})"


class Router:
    """Routes conversations over a :class:`RoutingState`; holds no state itself, so any replica can route,
    finish or snapshot any conversation of the tenant."""

    def __init__(
        self,
        state: RoutingState,
        *,
        supervisor_queue: str = "supervisor",
        overflow_after_s: float = 120.0,
        default_handle_time_s: float = 180.0,
    ) -> None:
        self.state = state
        self.supervisor_queue = supervisor_queue
        self.overflow_after_s = overflow_after_s
        self.default_handle_time_s = default_handle_time_s

    async def route(
        self,
        session_id: str,
        tenant: str,
        queue: str,
        priority: Priority,
        required_skills: frozenset[str] = frozenset(),
        features: Any = None,
    ) -> RoutingDecision:
        if priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}; one of {PRIORITIES}")
        priority, bumped = bump_priority(priority, features)
        notes = [bumped] if bumped else []
        await self.state.remove(tenant, session_id)  # re-routing a waiting conversation
        decision = await self._place(session_id, tenant, queue, priority, frozenset(required_skills), notes)
        log.info(
            "routing %s tenant=%s queue=%s priority=%s agent=%s position=%s overflow=%s",
            session_id, tenant, decision.queue, decision.priority, decision.agent_id, decision.position,
            decision.overflow,
        )  # fmt: skip
        return decision

    async def _place(
        self,
        session_id: str,
        tenant: str,
        queue: str,
        priority: Priority,
        required: frozenset[str],
        notes: list[str],
        overflow: bool = False,
    ) -> RoutingDecision:
        needed = required | {queue}
        agents = await self.state.list_agents(tenant)
        for agent in sorted((a for a in agents if a.can_take(needed)), key=lambda a: (a.active, a.agent_id)):
            if await self.state.try_reserve(tenant, agent.agent_id):  # lost a race: try the next one
                await self.state.set_assignment(tenant, Assignment(session_id, agent.agent_id, queue))
                return RoutingDecision(
                    session_id, queue, priority, agent.agent_id, None, None, overflow,
                    "; ".join([f"assigned to {agent.agent_id} in {queue}", *notes]),
                )  # fmt: skip
        online = [a for a in agents if a.status != "offline" and needed <= a.skills]
        can_overflow = not overflow and queue != self.supervisor_queue
        if not online and can_overflow:
            why = f"no agent with {'+'.join(sorted(needed))} is online; overflow to {self.supervisor_queue}"
            return await self._place(
                session_id, tenant, self.supervisor_queue, priority, frozenset(), [why, *notes], True
            )
        entry = QueueEntry(session_id, tenant, queue, priority, time.time(), required)
        position = await self.state.enqueue(entry)
        wait = None
        if online:
            handle_time = await self.state.avg_handle_time(tenant, queue) or self.default_handle_time_s
            wait = math.ceil(position / len(online)) * handle_time
        if wait is not None and wait > self.overflow_after_s and can_overflow:
            await self.state.remove(tenant, session_id)
            why = (
                f"{queue} wait ~{wait:.0f}s (position {position}) exceeds {self.overflow_after_s:.0f}s; "
                f"overflow to {self.supervisor_queue}"
            )
            return await self._place(
                session_id, tenant, self.supervisor_queue, priority, frozenset(), [why, *notes], True
            )
        busy = "nobody online in " if wait is None else "all busy in "
        return RoutingDecision(
            session_id, queue, priority, None, position, wait, overflow,
            "; ".join([f"{busy}{queue}: queued at position {position}", *notes]),
        )  # fmt: skip

    async def finish(
        self, tenant: str, session_id: str, agent_id: str, handle_time_s: float
    ) -> RoutingDecision | None:
        """The agent is done with the conversation: free the seat (once, however often this is called),
        record the handle time for the wait estimates and hand the agent its next conversation."""
        held = await self.state.get_assignment(tenant, session_id)
        if held is not None and held.agent_id != agent_id:
            raise ValueError(f"session {session_id} is held by agent {held.agent_id}, not {agent_id}")
        held = await self.state.pop_assignment(tenant, session_id)
        if held is None:
            log.warning(
                "finish: session %s of tenant %s holds no seat (already finished?)", session_id, tenant
            )
            return None
        await self.state.release(tenant, agent_id)
        await self.state.record_handle_time(tenant, held.queue, handle_time_s)
        return await self.dispatch(tenant, agent_id)

    async def set_status(self, tenant: str, agent_id: str, status: AgentStatus) -> list[RoutingDecision]:
        """Change an agent's status; one who becomes available takes waiting conversations at once."""
        if not await self.state.set_status(tenant, agent_id, status):
            raise KeyError(f"no agent {agent_id!r} in tenant {tenant!r}")
        decisions = []
        while status == "available" and (decision := await self.dispatch(tenant, agent_id)) is not None:
            decisions.append(decision)
        return decisions

    async def dispatch(self, tenant: str, agent_id: str) -> RoutingDecision | None:
        """Give the agent the waiting conversation it should take next (highest priority, then oldest,
        over every queue it has the skill for), if it has a free seat."""
        agent = await self.state.get_agent(tenant, agent_id)
        if agent is None or not agent.can_take(frozenset()):
            return None
        candidates = [
            entry
            for queue in agent.skills
            for entry in await self.state.queue_entries(tenant, queue)
            if entry.required_skills <= agent.skills
        ]
        if not candidates or not await self.state.try_reserve(tenant, agent_id):
            return None
        for entry in sorted(candidates, key=lambda e: (e.score, e.session_id)):
            if await self.state.remove(tenant, entry.session_id) is None:
                continue  # another agent took it meanwhile: the next one
            await self.state.set_assignment(tenant, Assignment(entry.session_id, agent_id, entry.queue))
            waited = max(0.0, time.time() - entry.enqueued_at)
            return RoutingDecision(
                entry.session_id, entry.queue, entry.priority, agent_id, None, None, False,
                f"assigned to {agent_id} in {entry.queue} after {waited:.0f}s waiting",
            )  # fmt: skip
        await self.state.release(tenant, agent_id)
        return None

    async def snapshot(self, tenant: str) -> dict[str, Any]:
        """The queue view: agents and every queue (the tenant's and its agents' skills) with waiting entries."""
        agents = await self.state.list_agents(tenant)
        names = set(await self.state.queues(tenant)).union(*(a.skills for a in agents))
        now = time.time()
        queues = []
        for name in sorted(names):
            entries = await self.state.queue_entries(tenant, name)
            queues.append(
                {
                    "name": name,
                    "depth": len(entries),
                    "entries": [
                        {
                            "session_id": e.session_id,
                            "priority": e.priority,
                            "waited_s": round(max(0.0, now - e.enqueued_at), 1),
                        }
                        for e in entries
                    ],
                }
            )
        return {
            "tenant": tenant,
            "agents": [
                {
                    "agent_id": a.agent_id,
                    "name": a.name,
                    "skills": sorted(a.skills),
                    "status": a.status,
                    "active": a.active,
                    "capacity": a.capacity,
                }
                for a in agents
            ],
            "queues": queues,
        }


# ---------------------------------------------------------------- roster


class _RosterAgent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str
    name: str
    skills: list[str] = Field(min_length=1)
    capacity: int = Field(default=2, ge=1, le=50)
    status: AgentStatus = "available"


class _Roster(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, list[_RosterAgent]]


def load_agents(path: Path | str = DEFAULT_ROSTER) -> list[Agent]:
    """Agents from a YAML roster: ``tenants: {TENANT: [{agent_id, name, skills, capacity, status}, ...]}``."""
    try:
        roster = _Roster.model_validate(yaml.safe_load(Path(path).read_text()))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"agent roster {path} not found") from exc
    return [
        Agent(a.agent_id, _check_tenant(tenant), a.name, frozenset(a.skills), a.capacity, a.status)
        for tenant, agents in roster.tenants.items()
        for a in agents
    ]
