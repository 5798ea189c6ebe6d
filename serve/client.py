"""A small asyncio websocket client for PROTOCOL v1 sessions (used by the demo, tests and benchmarks)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

__all__ = ["SessionClient"]


class SessionClient:
    """``async with SessionClient(url, token) as c: await c.start(...); await c.say("hi"); ...``"""

    def __init__(self, url: str, token: str | None, *, open_timeout: float = 30.0) -> None:
        self.url = url
        self.token = token
        self.open_timeout = open_timeout
        self.ws: Any = None
        self.session_id: str | None = None

    async def __aenter__(self) -> SessionClient:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.ws = await websockets.connect(
            self.url, additional_headers=headers, open_timeout=self.open_timeout, max_size=2**24
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.ws.close()

    async def send(self, event: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(event if isinstance(event, str | bytes) else json.dumps(event))

    async def recv(self, wait_s: float = 30.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), wait_s))

    async def recv_until(self, type_: str, wait_s: float = 30.0) -> list[dict[str, Any]]:
        """Every event up to and including the first of ``type_`` (or an ``error``). For
        ``assist.suggestion`` that is the *final* one: a suggestion with ``final: false`` is followed by its
        generated version (``assist.delta`` events, then the final ``assist.suggestion``)."""
        events = []
        while True:
            event = await self.recv(wait_s)
            events.append(event)
            if event["type"] == "error" or (event["type"] == type_ and event.get("final", True)):
                return events

    async def start(
        self, channel: str = "chat", customer_id: str = "cust-0001", **extra: Any
    ) -> dict[str, Any]:
        await self.send({"type": "session.start", "channel": channel, "customer_id": customer_id, **extra})
        started = await self.recv()
        if started["type"] == "session.started":
            self.session_id = started["session_id"]
        return started

    async def say(
        self, text: str, *, until: str = "assist.suggestion", wait_s: float = 30.0, **extra: Any
    ) -> list[dict]:
        """Send a chat message and collect its events up to ``until`` (the suggestion by default)."""
        await self.send({"type": "chat.message", "text": text, **extra})
        return await self.recv_until(until, wait_s)

    async def drain(self, quiet_s: float = 0.5) -> list[dict[str, Any]]:
        """Events that arrive until the connection is quiet for ``quiet_s``."""
        events = []
        while True:
            try:
                events.append(await self.recv(quiet_s))
            except TimeoutError:
                return events

    async def end(self, wait_s: float = 30.0) -> list[dict[str, Any]]:
        await self.send({"type": "session.end"})
        return await self.recv_until("session.ended", wait_s)
