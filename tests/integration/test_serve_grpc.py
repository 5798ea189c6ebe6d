"""switchboard.v1 over gRPC (``switchboard.v1.Sessions/Stream`` and ``Watch``) through Ray Serve's gRPC proxy,
against the real Serve app: the same events, field names, error codes and storage as the websocket."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
import sqlalchemy

from serve.client import GrpcSessionClient, SessionClient, connect, watch_events
from tests.integration.conftest import stored as stored_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGE = "I want to request my medical records"
ANALYSIS = {
    "transcript.final",
    "sentiment",
    "intent",
    "assist.suggestion",
}  # what a customer message produces

# PROTOCOL.md v1: the fields each server event carries (optional ones left out)
PROTOCOL_FIELDS = {
    "session.started": {"session_id", "tenant", "channel"},
    "transcript.final": {"utterance_id", "text", "speaker", "start", "end", "confidence", "latency_ms"},
    "sentiment": {"utterance_id", "label", "score", "model"},
    "intent": {"utterance_id", "intent", "confidence", "entities"},
    "assist.suggestion": {"suggestion_id", "utterance_id", "text", "articles", "source", "latency_ms"},
    "error": {"code", "message", "retryable"},
    "session.ended": {"session_id"},
}


def _shape(value: Any) -> Any:
    """The JSON types of a value, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _by_type(events: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for event in events:
        grouped.setdefault(event["type"], []).append(event)
    return grouped


async def _one_turn(client: SessionClient | GrpcSessionClient, customer_id: str) -> tuple[dict, list[dict]]:
    async with client as c:
        started = await c.start(customer_id=customer_id)
        assert started["type"] == "session.started", started
        events = await c.say(MESSAGE, message_id="m-1", wait_s=90)
        events += await c.drain(0.5)
        events += await c.end(wait_s=60)
    return started, events


async def test_a_grpc_chat_session_carries_the_websocket_events(app):
    grpc_started, grpc_events = await _one_turn(GrpcSessionClient(app.grpc_target, app.token), "cust-grpc-1")
    ws_started, ws_events = await _one_turn(SessionClient(app.ws_url, app.token), "cust-grpc-1")
    assert grpc_started["tenant"] == "demo" and grpc_started["channel"] == "chat"
    assert grpc_started["session_id"] != ws_started["session_id"]
    assert _shape(grpc_started) == _shape(ws_started)

    got, want = _by_type(grpc_events), _by_type(ws_events)
    for kind in ("transcript.final", "sentiment", "intent", "assist.suggestion", "session.ended"):
        assert got.get(kind), f"no {kind} over gRPC: {[e['type'] for e in grpc_events]}"
        for event in got[kind]:
            assert PROTOCOL_FIELDS[kind] <= set(event), (kind, sorted(event))
    assert [e["type"] for e in grpc_events if e["type"] != "assist.delta"][0] == "transcript.final"
    assert not got.get("error"), got.get("error")

    final = got["transcript.final"][0]
    assert final["text"] == MESSAGE and final["speaker"] == "customer" and final["message_id"] == "m-1"
    utterance = final["utterance_id"]
    assert all(got[k][0]["utterance_id"] == utterance for k in ("sentiment", "intent", "assist.suggestion"))
    assert got["intent"][0]["intent"] == want["intent"][0]["intent"]
    assert got["sentiment"][0]["label"] == want["sentiment"][0]["label"]
    # same message, same deterministic analysis: the same keys with the same JSON types on both transports
    for kind in ("transcript.final", "sentiment", "intent"):
        assert _shape(got[kind][0]) == _shape(want[kind][0]), kind
    first, ws_first = got["assist.suggestion"][0], want["assist.suggestion"][0]
    assert first["articles"] and all(set(a) == {"id", "title", "score"} for a in first["articles"])
    assert [a["id"] for a in first["articles"]] == [a["id"] for a in ws_first["articles"]]
    assert _shape(first) == _shape(ws_first)
    # the final (possibly generated) suggestion: which optional fields it has depends on what the model wrote,
    # but what both carry has the same types
    last, ws_last = got["assist.suggestion"][-1], want["assist.suggestion"][-1]
    assert last.get("final", True) is not False and last["suggestion_id"] == first["suggestion_id"]
    common = set(last) & set(ws_last)
    assert PROTOCOL_FIELDS["assist.suggestion"] <= common
    assert {k: _shape(last[k]) for k in common} == {k: _shape(ws_last[k]) for k in common}
    if last.get("source") == ws_last.get("source") and last.get("fallback") == ws_last.get("fallback"):
        assert set(last) == set(ws_last)
    ended = got["session.ended"][-1]
    assert grpc_events[-1] is ended and ended["session_id"] == grpc_started["session_id"]
    assert ended["summary"]["turns"] == want["session.ended"][-1]["summary"]["turns"] == 1

    # stored in PostgreSQL like a websocket session
    engine = sqlalchemy.create_engine(app.settings.database_url)
    session_id = grpc_started["session_id"]
    try:
        deadline = time.monotonic() + 20
        while True:
            with engine.connect() as conn:
                utterances = conn.execute(
                    sqlalchemy.text(
                        "SELECT id, speaker, text, message_id FROM utterances WHERE session_id = :s ORDER BY seq"
                    ),
                    {"s": session_id},
                ).all()
                stored = conn.execute(
                    sqlalchemy.text(
                        "SELECT type, utterance_id, payload FROM events WHERE session_id = :s ORDER BY seq"
                    ),
                    {"s": session_id},
                ).all()
                status = conn.execute(
                    sqlalchemy.text("SELECT status, channel, tenant FROM sessions WHERE id = :s"),
                    {"s": session_id},
                ).one_or_none()
            done = utterances and status and status.status == "ended" and ANALYSIS <= {r.type for r in stored}
            if done or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        engine.dispose()
    assert [(u.id, u.speaker, u.message_id) for u in utterances] == [(utterance, "customer", "m-1")]
    assert utterances[0].text.startswith("enc1:") and MESSAGE not in utterances[0].text  # sealed at rest
    opened = stored_rows(app.settings, "utterances", session_id)
    assert [(u["id"], u["speaker"], u["text"], u["message_id"]) for u in opened] == [
        (utterance, "customer", MESSAGE, "m-1")
    ]
    assert status is not None and tuple(status) == ("ended", "chat", "demo")
    types = [row.type for row in stored]
    assert ANALYSIS <= set(types), types
    payloads = stored_rows(app.settings, "events", session_id)
    stored_final = next(p for p in payloads if p["type"] == "transcript.final")
    assert stored_final["utterance_id"] == utterance and stored_final["text"] == MESSAGE


async def test_a_bad_token_gets_unauthorized_then_unauthenticated(app):
    for token in ("wrong-token", None):
        async with GrpcSessionClient(app.grpc_target, token) as c:
            event = await c.recv()
            assert event["type"] == "error" and event["code"] == "unauthorized", event
            assert event["retryable"] is False and event["message"]
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await c.recv()
            assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await c.status() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("transport", ["websocket", "grpc"])
async def test_invalid_events_get_the_same_stable_codes_and_the_stream_stays_usable(app, transport):
    url = app.ws_url if transport == "websocket" else f"grpc://{app.grpc_target}"
    codes: list[str] = []
    async with connect(url, app.token) as c:

        async def expect_error(event: dict | bytes) -> None:
            await c.send(event)
            reply = await c.recv()
            assert reply["type"] == "error", reply
            assert reply["message"] and isinstance(reply["retryable"], bool)
            codes.append(reply["code"])

        await expect_error({"type": "chat.message", "text": "hello?"})
        await expect_error({"type": "session.end"})
        assert (await c.start(customer_id="cust-grpc-errors"))["type"] == "session.started"
        await expect_error(
            {"type": "suggestion.feedback", "suggestion_id": "sug_never_sent", "action": "accepted"}
        )
        await expect_error({"type": "suggestion.feedback", "suggestion_id": "s", "action": "loved"})
        await expect_error({"type": "chat.message", "text": ""})
        await expect_error({"type": "session.start", "channel": "chat", "customer_id": "again"})
        await expect_error(b"\x00\x01\x02\x03")
        events = await c.say("how do I request a refill for my prescription", wait_s=90)
        assert events[0]["type"] == "transcript.final" and events[-1]["type"] == "assist.suggestion", events
        ended = await c.end(wait_s=60)
    assert codes == [
        "session_not_started",
        "session_not_started",
        "unknown_suggestion",
        "invalid_event",
        "invalid_event",
        "session_already_started",
        "unexpected_binary",
    ]
    assert ended[-1]["type"] == "session.ended" and ended[-1]["summary"]["turns"] == 1


async def test_watch_over_grpc_follows_a_websocket_session(app):
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(customer_id="cust-grpc-watch")
        first = await c.say("I can't log in to the patient portal", wait_s=90)
        first += await c.drain(0.5)
        watch = watch_events(f"grpc://{app.grpc_target}", app.token, c.session_id)
        snapshot = await asyncio.wait_for(anext(watch), 30)
        assert snapshot["type"] == "session.snapshot", snapshot
        assert snapshot["session_id"] == c.session_id and snapshot["status"] == "live"
        assert snapshot["channel"] == "chat" and snapshot["customer_id"] == "cust-grpc-watch"
        history = snapshot["events"]
        assert history[0]["type"] == "session.started" and history[0]["session_id"] == c.session_id
        assert [e["type"] for e in history[1:]] == [e["type"] for e in first]
        assert history[1]["text"] == "I can't log in to the patient portal"

        async def follow() -> list[dict]:
            seen = []
            async for event in watch:
                seen.append(event)
                if event["type"] == "session.ended":
                    break
            return seen

        live = asyncio.create_task(follow())
        second = await c.say("it still says my password is wrong", wait_s=90)
        ended = await c.end(wait_s=60)
        followed = await asyncio.wait_for(live, 60)
        await watch.aclose()
    assert followed[-1]["type"] == "session.ended" and followed[-1]["session_id"] == c.session_id
    finals = [e for e in followed if e["type"] == "transcript.final"]
    assert [f["text"] for f in finals] == ["it still says my password is wrong"]
    assert finals[0]["utterance_id"] == second[0]["utterance_id"]
    # the watcher sees what the customer's connection saw, in the same order
    assert [e["type"] for e in followed] == [e["type"] for e in second + ended]
