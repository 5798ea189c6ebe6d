"""Multi-node: a real two-node Ray cluster on this machine (``ray start --head``, then ``ray start --address``),
the app's replicas spread over both nodes, and live chat sessions that survive the worker node's removal.

Each node has its own temp dir, ports and a custom resource naming it (``node_a``: the head, ``node_b``: the
worker; tests/multinode.py). The app is deployed with ``serve.run.launch(address=...)`` from
tests/integration/serve-multinode.yaml: two replicas of the ingress and of every text model, which Serve's SPREAD
scheduling puts on both nodes. The head's proxy sends each new websocket session to the less busy ingress
replica (locality preference off), so the two sessions are held one per node. Removing the worker node then
kills one session's ingress (its client resumes it on a new connection with its ``session_id``) and half of every
model's replicas (calls in flight fall back; the next go to the head's replicas), and Serve starts the lost
replicas again on the head. Nothing the server accepted (answered with ``transcript.final``) is lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import WebSocketException

from pipelines.config import Settings
from serve.client import SessionClient
from tests.integration.conftest import stored
from tests.multinode import TwoNodeCluster, deploy, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = Path(__file__).with_name("serve-multinode.yaml")
DEPLOYMENTS = {"ingress", "guardrail", "sentiment", "embedder", "intent", "knowledge_base"}
ANSWER_S = 60.0  # a message after the node loss: accepted and answered within this (reconnects included)
ATTEMPT_S = 20.0  # one try; a connection silent for this long is treated as dead and the session resumed


@dataclass
class Chat:
    """One customer's chat as a well-behaved client runs it: a message that was not accepted (a retryable error,
    or a connection that dropped) is sent again, a dropped session is resumed with its ``session_id``, and every
    message the server accepted (answered with ``transcript.final``) is remembered."""

    ws_url: str
    token: str
    customer_id: str
    client: SessionClient | None = None
    session_id: str | None = None
    accepted: list[str] = field(default_factory=list)
    utterances: set[str] = field(default_factory=set)  # ids of the accepted messages
    resumes: int = 0
    resends: int = 0

    async def open(self) -> None:
        client = SessionClient(self.ws_url, self.token, open_timeout=ATTEMPT_S)
        await client.__aenter__()
        self.client = client
        resume = {"session_id": self.session_id} if self.session_id else {}
        started = await client.start(customer_id=self.customer_id, **resume)
        assert started["type"] == "session.started", started
        if self.session_id is None:
            self.session_id = started["session_id"]
        else:
            assert started["session_id"] == self.session_id and started["resumed"] is True, started
            self.resumes += 1

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.__aexit__(None, None, None), 5)
            except (WebSocketException, OSError, TimeoutError):
                pass

    async def _turn(self, text: str, wait_s: float, events: list[dict[str, Any]]) -> None:
        """Send ``text`` and collect its events into ``events``: up to the final ``assist.suggestion``, or up to an
        error that ends the turn before the text was accepted."""
        assert self.client is not None
        await self.client.drain(0.3)  # what the previous message still had to say (escalation, routing...)
        await self.client.send({"type": "chat.message", "text": text})
        earlier, deadline = set(self.utterances), time.monotonic() + wait_s
        while True:
            event = await self.client.recv(max(0.1, deadline - time.monotonic()))
            if event.get("utterance_id") in earlier:
                continue  # late news about an earlier message
            events.append(event)
            if event["type"] == "transcript.final":
                self.utterances.add(event["utterance_id"])
            if event["type"] == "assist.suggestion" and event.get("final", True) is not False:
                return
            if event["type"] == "error" and not _accepted(events):
                return

    async def say(self, text: str, within_s: float = ANSWER_S) -> list[dict[str, Any]]:
        """``text`` accepted (``transcript.final``) and answered (``assist.suggestion``) within ``within_s``,
        resending it and resuming the session as often as that takes. Returns the answered try's events."""
        deadline = time.monotonic() + within_s
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{self.session_id}: {text!r} was not answered within {within_s:.0f}s"
            events: list[dict[str, Any]] = []
            try:
                if self.client is None:
                    await self.open()
                await self._turn(text, min(ATTEMPT_S, remaining), events)
            except (WebSocketException, OSError, TimeoutError) as exc:
                # accepted but never answered: sending it again would duplicate it, so that is a failure
                assert not _accepted(events), f"{text!r} accepted, then no suggestion ({exc!r}): {events}"
                # the connection, or the ingress replica behind it, is gone: resume the session on a new one
                await self.close()
                await asyncio.sleep(0.5)
                continue
            if _accepted(events):
                self.accepted.append(text)
                return events
            error = events[-1]
            assert error["type"] == "error" and error["retryable"], error  # e.g. pii_blocked: held; send again
            self.resends += 1
            await asyncio.sleep(0.5)


def _accepted(events: list[dict[str, Any]]) -> bool:
    return any(e["type"] == "transcript.final" for e in events)


def _provision(settings: Settings) -> None:
    """What an operator does once before the first deploy: the keys on the shared volume, the database schema,
    the tenant's data key. Two ingress replicas starting at once would otherwise race to create them."""
    from pipelines.keys import encrypted_store
    from pipelines.review import load_or_create_key

    for key_file in (settings.resolved_master_key_file, settings.resolved_review_key_file):
        load_or_create_key(Path(key_file))
    store = encrypted_store(settings)
    try:
        store.create_schema()
        store.keyring.active("demo")
    finally:
        store.engine.dispose()


def _by_node(placed: dict[str, list[str]], names: dict[str, str]) -> dict[str, list[str]]:
    ids = {v: k for k, v in names.items()}
    return {d: sorted(ids.get(n, n) for n in nodes) for d, nodes in sorted(placed.items())}


@pytest.mark.timeout(600)
async def test_sessions_survive_the_loss_of_a_node(tmp_path, index_dir, pg_database):
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    def mark(name: str) -> None:
        timings[name] = round(time.monotonic() - t0, 1)

    settings = {"data_dir": str(tmp_path / "data"), "index_dir": str(index_dir), "database_url": pg_database}
    resolved = Settings(**settings)
    _provision(resolved)

    # the head's proxy spreads new sessions over both ingress replicas instead of preferring its own node's
    with TwoNodeCluster(num_cpus=2, env={"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}) as cluster:
        mark("cluster_up")
        names = cluster.nodes()
        assert set(names) == {"node_a", "node_b"}
        app = await asyncio.to_thread(
            deploy, cluster, CONFIG, settings, port=free_port(), grpc_port=free_port(), timeout_s=300
        )
        mark("deployed")

        # every deployment: two RUNNING replicas, one on each node (Serve status and the Ray state API agree)
        placed = await asyncio.to_thread(cluster.wait_replicas, 2, 120)
        mark("replicas_running")
        assert set(placed) == DEPLOYMENTS, placed
        spread = _by_node(placed, names)
        assert all(nodes == ["node_a", "node_b"] for nodes in spread.values()), spread

        chats = [Chat(app["ws_url"], app["token"], f"cust-00{i}") for i in (1, 2)]
        for chat, text in zip(chats, ("I need to reschedule my appointment", "why is my bill higher this month"), strict=True):
            await chat.open()
            events = await chat.say(text)
            assert events[0]["type"] == "transcript.final" and chat.resends == 0, events
        mark("sessions_open")

        # the worker node leaves: `ray stop` for its processes only
        await asyncio.to_thread(cluster.remove_worker)
        mark("worker_removed")
        await asyncio.to_thread(cluster.wait_nodes, {"node_a"}, 30)

        # every session keeps working: the one whose ingress died resumes on a new connection
        answered = await asyncio.gather(
            *(chat.say(text) for chat, text in zip(chats, ("can I move it to Friday", "I was charged twice"), strict=True))
        )
        mark("answered_after_loss")
        assert all(events[-1]["type"] == "assist.suggestion" for events in answered)
        assert sum(chat.resumes for chat in chats) >= 1, "no session was held by the worker's ingress replica"

        # Serve starts the lost replicas again: two of each, all on the head now
        placed = await asyncio.to_thread(cluster.wait_replicas, 2, 240, {names["node_a"]})
        mark("replicas_restored")
        assert set(placed) == DEPLOYMENTS, placed

        for chat, text in zip(chats, ("thanks, that works", "please send me the invoice"), strict=True):
            await chat.say(text)
        for chat in chats:
            assert chat.client is not None
            ended = await chat.client.end()
            assert ended[-1]["type"] == "session.ended" and ended[-1]["session_id"] == chat.session_id
            await chat.close()
        mark("sessions_ended")

    # nothing accepted is lost: each transcript holds exactly the accepted messages, in order, across the resume
    for chat in chats:
        assert chat.session_id is not None
        rows = stored(resolved, "utterances", chat.session_id)
        assert [r["text"] for r in rows] == chat.accepted, (chat.session_id, chat.accepted)
        assert len(chat.accepted) == 3
    mark("done")
    report = {
        "timings_s": timings,
        "spread_before": spread,
        "resumes": [c.resumes for c in chats],
        "resends": [c.resends for c in chats],
    }
    print("multinode:", json.dumps(report))
