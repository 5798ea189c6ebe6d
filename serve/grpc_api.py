"""``switchboard.v1.Sessions`` over Ray Serve's gRPC proxy: the same sessions as the websocket, with the
events as protobuf (``serve/protos/sessions.proto``).

``Stream`` runs a ``SessionConnection`` over a gRPC transport, so auth, roles, error codes and everything after
them are the websocket's. ``Watch`` runs a ``WatchConnection`` (snapshot, then live events).

Conversion is mechanical: a pydantic event's ``wire()`` dict maps 1:1 onto its protobuf message (the field
names are the same), and the oneof case is the event type with dots as underscores. A unit test keeps the
``.proto`` and ``pipelines/events.py`` in step.
"""

from __future__ import annotations

import asyncio
import typing
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

from pipelines.errors import AuthError, ProtocolError
from pipelines.events import ServerEvent, _Event

from .auth import bearer_token
from .connection import SessionConnection, WatchConnection
from .protos import load

if TYPE_CHECKING:
    from .ingress import Ingress

__all__ = ["to_proto", "from_proto", "server_event_dict", "client_message", "stream", "watch"]

_pb, _ = load()
_SERVER_MODELS = {m.model_fields["type"].default: m for m in typing.get_args(ServerEvent)}


def _case(event_type: str) -> str:
    return event_type.replace(".", "_")


def to_proto(event: _Event | dict[str, Any]) -> Any:
    """A server event (pydantic or its wire dict) → ``ServerMessage``."""
    wire = dict(event if isinstance(event, dict) else event.wire())
    case = _case(wire.pop("type"))
    message = _pb.ServerMessage()
    json_format.ParseDict(wire, getattr(message, case), ignore_unknown_fields=True)
    return message


def server_event_dict(message: Any) -> dict[str, Any]:
    """``ServerMessage`` → the same dict the websocket would have carried (client side)."""
    case = message.WhichOneof("event")
    inner = getattr(message, case)
    data = json_format.MessageToDict(inner, preserving_proto_field_name=True)
    for field in inner.DESCRIPTOR.fields:  # proto3 leaves out zero values of fields without presence
        if field.name not in data and not field.has_presence and not field.is_repeated:
            data[field.name] = getattr(inner, field.name)
    event_type = "error" if case == "error" else case.replace("_", ".", 1)
    model = _SERVER_MODELS.get(event_type)
    for name, info in (model.model_fields.items() if model else ()):  # empty lists proto3 cannot tell apart
        if name not in data and info.default_factory is list:
            data[name] = []
    return {"type": event_type, **data}


def client_message(event: dict[str, Any] | bytes) -> Any:
    """A client event dict (or raw audio) → ``ClientMessage`` (client side)."""
    message = _pb.ClientMessage()
    if isinstance(event, bytes | bytearray):
        message.audio = bytes(event)
        return message
    data = dict(event)
    case = _case(data.pop("type"))
    getattr(message, case).SetInParent()  # `session_end` has no fields: select the case explicitly
    json_format.ParseDict(data, getattr(message, case))
    return message


def from_proto(message: Any) -> dict[str, Any] | bytes:
    """``ClientMessage`` → raw audio bytes, or the event dict ``parse_frame`` validates."""
    case = message.WhichOneof("event")
    if case is None:
        raise ProtocolError("an empty ClientMessage: set one of its `event` fields", code="invalid_event")
    if case == "audio":
        return bytes(message.audio)
    data = json_format.MessageToDict(getattr(message, case), preserving_proto_field_name=True)
    return {"type": case.replace("_", ".", 1), **data}


class _GrpcTransport:
    """A gRPC bidirectional stream as a session transport. Events go out through a queue the RPC drains."""

    def __init__(self, requests: Any | None) -> None:
        self._requests = requests.__aiter__() if requests is not None else None
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    async def receive(self) -> Any:
        if self.closed or self._requests is None:
            return None
        try:
            message = await self._requests.__anext__()
        except (StopAsyncIteration, asyncio.CancelledError):
            return None
        except Exception:  # the client cancelled or the stream broke: same as a websocket disconnect
            return None
        try:
            return from_proto(message)
        except ProtocolError as exc:
            await self.send(exc.to_event())
            return await self.receive()

    async def send(self, event: _Event | dict[str, Any]) -> None:
        if not self.closed:
            await self.out.put(to_proto(event))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True


async def _principal(ingress: Ingress, grpc_context: Any, action: str):
    metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
    principal = await ingress.auth.authenticate_async(bearer_token(metadata.get("authorization"), None))
    principal.require(action)
    return principal


async def _drain(transport: _GrpcTransport, task: asyncio.Task):
    """Yield what the connection sends until it is done and everything sent is out."""
    getter: asyncio.Future | None = None
    try:
        while True:
            getter = asyncio.ensure_future(transport.out.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            while not transport.out.empty():
                yield transport.out.get_nowait()
            task.result()  # surface a bug instead of ending silently
            return
    finally:
        if getter is not None and not getter.done():
            getter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _unauthenticated(grpc_context: Any, exc: AuthError) -> Any:
    if grpc_context is not None:
        denied = exc.code == "forbidden"  # valid credentials, a role that may not do this
        grpc_context.set_code(grpc.StatusCode.PERMISSION_DENIED if denied else grpc.StatusCode.UNAUTHENTICATED)
        grpc_context.set_details(exc.message)
    return to_proto(exc.to_event())


async def _serve(ingress: Ingress, grpc_context: Any, action: str, transport: _GrpcTransport, connection: Any):
    """Authenticate for ``action``, then run ``connection(principal)`` over ``transport`` and stream what it
    sends; credentials that are missing, invalid or of the wrong role end the call with the error event."""
    try:
        principal = await _principal(ingress, grpc_context, action)
    except AuthError as exc:
        yield _unauthenticated(grpc_context, exc)
        return
    await ingress._ensure_store()
    task = asyncio.create_task(connection(principal).run())
    async for message in _drain(transport, task):
        yield message


def stream(ingress: Ingress, request_stream: Any, grpc_context: Any):
    transport = _GrpcTransport(request_stream)
    return _serve(
        ingress, grpc_context, "session.customer", transport, lambda p: SessionConnection(ingress, transport, p)
    )


def watch(ingress: Ingress, request: Any, grpc_context: Any):
    transport = _GrpcTransport(None)
    transport.receive = _wait_forever  # type: ignore[method-assign] - a watch request carries no commands
    session_id = request.session_id[:64]
    return _serve(
        ingress, grpc_context, "session.watch", transport, lambda p: WatchConnection(ingress, transport, p, session_id)
    )


async def _wait_forever() -> None:
    await asyncio.Event().wait()
