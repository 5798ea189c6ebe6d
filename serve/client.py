"""Python clients for PROTOCOL v1 sessions, over the websocket (``SessionClient``) or gRPC
(``GrpcSessionClient``, ``switchboard.v1.Sessions/Stream``). Both speak event dicts with the same methods, so
the demo, the CLI, tests and benchmarks switch transports with one argument (``connect``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import websockets

__all__ = ["SessionClient", "GrpcSessionClient", "connect", "watch_events"]


class _Events:
    """What both clients share: collecting events and the session helpers on top of send/recv."""

    session_id: str | None
    queued: list[dict[str, Any]]  # the `session.queued` notices the last start() waited through

    async def send(self, event: dict[str, Any] | str | bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def recv(self, wait_s: float = 30.0) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def recv_until(self, type_: str, wait_s: float = 30.0) -> list[dict[str, Any]]:
        """Every event up to and including the first of ``type_`` (or an ``error``). For
        ``assist.suggestion`` that is the *final* one: a suggestion with ``final: false`` is followed by its
        generated version (``assist.delta`` events, then the final ``assist.suggestion``)."""
        events = []
        while True:
            event = await self.recv(wait_s)
            events.append(event)
            if event["type"] == "error" or (event["type"] == type_ and event.get("final", True) is not False):
                return events

    async def start(
        self, channel: str = "chat", customer_id: str = "cust-0001", **extra: Any
    ) -> dict[str, Any]:
        """Start (or resume) a session: ``session.started``, or the ``error`` that refused it. A server at
        capacity first sends ``session.queued`` notices (kept in ``self.queued``); this waits through them."""
        await self.send({"type": "session.start", "channel": channel, "customer_id": customer_id, **extra})
        started = await self.recv()
        self.queued = []
        while started["type"] == "session.queued":
            self.queued.append(started)
            started = await self.recv(float(started.get("timeout_s", 60.0)) + 10.0)
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

    async def stream_audio(
        self,
        pcm: bytes,
        *,
        bytes_per_second: int,
        frame_bytes: int,
        pace: float | None = 1.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        wait_s: float = 300.0,
    ) -> list[dict[str, Any]]:
        """Play a voice session's audio: send ``pcm`` (in the format declared by ``session.start``) in frames
        of ``frame_bytes``, at ``pace`` times real time (``None``: as fast as the connection takes it), then
        ``session.end``; meanwhile receive every event up to ``session.ended`` (``on_event`` sees each one as
        it arrives). Returns the events. Sending stops early when the connection does."""
        events: list[dict[str, Any]] = []

        async def receive() -> None:
            while True:
                event = await self.recv(wait_s)
                events.append(event)
                if on_event is not None:
                    on_event(event)
                if event["type"] == "session.ended":
                    return

        receiver = asyncio.create_task(receive())
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for i in range(0, len(pcm), frame_bytes):
                if receiver.done():
                    break
                await self.send(pcm[i : i + frame_bytes])
                if pace is None:
                    await asyncio.sleep(0)  # let the receiver keep up
                    continue
                delay = t0 + (i + frame_bytes) / (bytes_per_second * pace) - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if not receiver.done():
                await self.send({"type": "session.end"})
            await receiver
        finally:
            if not receiver.done():
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
        return events


class SessionClient(_Events):
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



class GrpcSessionClient(_Events):
    """``async with GrpcSessionClient("127.0.0.1:9000", token) as c:`` — the same session over
    ``switchboard.v1.Sessions/Stream``; events arrive as the same dicts the websocket carries."""

    def __init__(self, target: str, token: str | None) -> None:
        self.target = target
        self.token = token
        self.session_id: str | None = None
        self._channel: Any = None
        self._call: Any = None
        self._reading: asyncio.Future | None = None

    async def __aenter__(self) -> GrpcSessionClient:
        import grpc

        from .protos import load

        _, pb_grpc = load()
        self._channel = grpc.aio.insecure_channel(
            self.target, options=[("grpc.max_receive_message_length", 2**24)]
        )
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        self._call = pb_grpc.SessionsStub(self._channel).Stream(metadata=metadata)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
        await self._channel.close()

    async def send(self, event: dict[str, Any] | str | bytes) -> None:
        from .grpc_api import client_message

        try:
            await self._call.write(client_message(json.loads(event) if isinstance(event, str) else event))
        except asyncio.InvalidStateError:  # grpc's "RPC already finished": say why, like recv at EOF
            raise ConnectionError(f"the stream ended ({await self._call.code()})") from None

    async def recv(self, wait_s: float = 30.0) -> dict[str, Any]:
        import grpc

        from .grpc_api import server_event_dict

        # Cancelling a gRPC read cancels the whole RPC: a wait that times out leaves the read pending for the
        # next recv instead (so `drain` and timeouts behave as on the websocket).
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._call.read())
        try:
            message = await asyncio.wait_for(asyncio.shield(self._reading), wait_s)
        finally:
            if self._reading is not None and self._reading.done():
                self._reading = None
        if message is grpc.aio.EOF:
            raise ConnectionError(f"the stream ended ({await self._call.code()})")
        return server_event_dict(message)

    async def status(self) -> Any:
        """The gRPC status code once the stream has ended."""
        return await self._call.code()


def connect(url: str, token: str | None) -> SessionClient | GrpcSessionClient:
    """A client for ``ws://host:port/v1/sessions`` or ``grpc://host:port``."""
    if url.startswith("grpc://"):
        return GrpcSessionClient(url.removeprefix("grpc://"), token)
    return SessionClient(url, token)


async def watch_events(url: str, token: str | None, session_id: str) -> Any:
    """Follow a session: yields ``session.snapshot``, then its events until it ends. ``url`` is the
    websocket base (``ws://host:port``) or ``grpc://host:port``."""
    if url.startswith("grpc://"):
        import grpc

        from .grpc_api import server_event_dict
        from .protos import load

        pb, pb_grpc = load()
        async with grpc.aio.insecure_channel(url.removeprefix("grpc://")) as channel:
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            async for message in pb_grpc.SessionsStub(channel).Watch(
                pb.WatchRequest(session_id=session_id), metadata=metadata
            ):
                yield server_event_dict(message)
        return
    base = url.split("/v1/", 1)[0].rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with websockets.connect(f"{base}/v1/sessions/{session_id}/watch", additional_headers=headers) as ws:
        async for frame in ws:
            yield json.loads(frame)
