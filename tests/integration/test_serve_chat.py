"""The real websocket protocol against the real Ray Serve app (PROTOCOL.md v1)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import sqlalchemy
import websockets

from serve.client import SessionClient
from tests.integration.conftest import stored

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_healthz_reports_every_deployment(app):
    r = httpx.get(f"{app.http_url}/healthz", timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert set(body["deployments"]) == {
        "guardrail",
        "sentiment",
        "embedder",
        "intent",
        "knowledge_base",
        "asr",
        "speaker_embedder",
        "response_generator",
    }


async def test_chat_session_end_to_end(app):
    async with SessionClient(app.ws_url, app.token) as c:
        started = await c.start(customer_id="cust-42")
        assert (
            started["type"] == "session.started"
            and started["tenant"] == "demo"
            and started["channel"] == "chat"
        )
        events = await c.say("Hi, why was I charged twice on my bill this month?", message_id="m-1")
        types = [e["type"] for e in events]
        assert types[0] == "transcript.final" and types[-1] == "assist.suggestion"
        assert {"sentiment", "intent"} <= set(types)
        final = events[0]
        assert final["speaker"] == "customer" and final["message_id"] == "m-1" and final["utterance_id"]
        suggestion = events[-1]
        assert suggestion["utterance_id"] == final["utterance_id"]
        assert suggestion["source"] == "articles_only" and suggestion["articles"]
        assert all({"id", "title", "score"} <= set(a) for a in suggestion["articles"])
        await c.send(
            {
                "type": "suggestion.feedback",
                "suggestion_id": suggestion["suggestion_id"],
                "action": "accepted",
            }
        )
        events = await c.say("I want to talk to a supervisor, my lawyer will hear about this")
        escalations = [e for e in events + await c.drain(1.0) if e["type"] == "escalation"]
        assert {e["queue"] for e in escalations} == {"supervisor"}
        assert all({"utterance_id", "reason", "queue", "priority"} <= set(e) for e in escalations)
        ended = await c.end()
        assert ended[-1]["type"] == "session.ended" and ended[-1]["session_id"] == c.session_id
        assert ended[-1]["summary"]["turns"] == 2


async def test_concurrent_sessions_are_independent(app):
    async def one(i: int) -> tuple[str, list[dict]]:
        async with SessionClient(app.ws_url, app.token) as c:
            await c.start(customer_id=f"cust-{i}")
            events = await c.say(f"I need to reschedule my appointment number {i}")
            await c.end()
            return c.session_id, events

    results = await asyncio.gather(*(one(i) for i in range(12)))
    assert len({sid for sid, _ in results}) == 12
    for _, events in results:
        assert events[-1]["type"] == "assist.suggestion"
        assert [e for e in events if e["type"] == "intent"][0]["intent"] == "appointment"


async def test_resume_after_disconnect_keeps_the_transcript(app, pg_session_database):
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start()
        await c.say("I can't log in to the patient portal")
        session_id = c.session_id
    # the connection dropped without session.end; resume it on a new one
    async with SessionClient(app.ws_url, app.token) as c:
        started = await c.start(session_id=session_id)
        assert started["session_id"] == session_id and started["resumed"] is True
        await c.say("it still says my password is wrong")
        await c.end()
    engine = sqlalchemy.create_engine(pg_session_database)
    with engine.connect() as conn:
        status = conn.execute(
            sqlalchemy.text("select status from sessions where id = :s"), {"s": session_id}
        ).scalar()
    engine.dispose()
    utterances = stored(app.settings, "utterances", session_id)
    rows = [u["text"] for u in utterances]
    assert rows == ["I can't log in to the patient portal", "it still says my password is wrong"]
    assert all(u["sealed"].startswith("enc1:") and "portal" not in u["sealed"] for u in utterances)  # at rest
    assert status == "ended"


# ------------------------------------------------------------------ bad input


async def _expect_error(c: SessionClient, frame, code: str) -> dict:
    await c.send(frame)
    event = await c.recv()
    assert event["type"] == "error", event
    assert event["code"] == code, event
    assert event["message"] and isinstance(event["retryable"], bool)
    return event


async def _still_works(c: SessionClient) -> None:
    events = await c.say("how do I request a refill for my prescription")
    assert events[-1]["type"] == "assist.suggestion"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ('["a", "list"]', "bad_json"),
        ('{"type": "chat.explode", "text": "x"}', "unknown_type"),
        ('{"text": "no type at all"}', "unknown_type"),
        ('{"type": "chat.message"}', "invalid_event"),
        ('{"type": "suggestion.feedback", "suggestion_id": "s", "action": "loved"}', "invalid_event"),
        (
            '{"type": "suggestion.feedback", "suggestion_id": "sug_never_sent", "action": "accepted"}',
            "unknown_suggestion",
        ),
        ('{"type": "session.start", "channel": "chat", "customer_id": "again"}', "session_already_started"),
        (b"\x00\x01\x02\x03", "unexpected_binary"),
    ],
)
async def test_bad_frames_get_stable_codes_and_the_session_continues(app, frame, code):
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start()
        await _expect_error(c, frame, code)
        await _still_works(c)


async def test_text_over_64k_is_rejected_and_nothing_is_lost(app):
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start()
        await c.say("first message is kept")
        await _expect_error(
            c, json.dumps({"type": "chat.message", "text": "x" * 70_000}), "message_too_large"
        )
        await _still_works(c)
        ended = await c.end()
    assert ended[-1]["summary"]["turns"] == 2


async def test_events_before_session_start_are_refused(app):
    async with SessionClient(app.ws_url, app.token) as c:
        await _expect_error(c, {"type": "chat.message", "text": "hello?"}, "session_not_started")
        await _expect_error(c, {"type": "session.end"}, "session_not_started")
        await _expect_error(c, b"\x00" * 640, "session_not_started")
        started = await c.start()
        assert started["type"] == "session.started"


async def test_voice_with_an_unsupported_audio_format_is_refused(app):
    async with SessionClient(app.ws_url, app.token) as c:
        await _expect_error(
            c,
            {
                "type": "session.start",
                "channel": "voice",
                "customer_id": "c",
                "audio": {"sample_rate": 44100},
            },
            "invalid_event",
        )
        assert (await c.start(channel="voice"))["type"] == "session.started"


async def test_resume_of_unknown_session_is_refused(app):
    async with SessionClient(app.ws_url, app.token) as c:
        await _expect_error(
            c,
            {"type": "session.start", "channel": "chat", "customer_id": "c", "session_id": "ses_nope"},
            "session_not_found",
        )


@pytest.mark.parametrize("token", ["wrong-token", None])
async def test_bad_token_is_refused_and_closed(app, token):
    async with SessionClient(app.ws_url, token) as c:
        event = await c.recv()
        assert event["type"] == "error" and event["code"] == "unauthorized" and event["retryable"] is False
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await c.recv()
        assert closed.value.rcvd.code == 1008


async def test_query_token_is_accepted_for_browsers(app):
    async with SessionClient(f"{app.ws_url}?token={app.token}", None) as c:
        assert (await c.start())["type"] == "session.started"


async def test_server_unaffected_after_abuse(app):
    # a burst of garbage on several connections, some dropped mid-session
    async def garbage(i: int) -> None:
        async with SessionClient(app.ws_url, app.token) as c:
            await c.start()
            for frame in ("}", "null", "1e999", '{"type": 5}', "\u0000"):
                await c.send(frame)
            await c.drain(0.3)

    await asyncio.gather(*(garbage(i) for i in range(8)))
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{app.http_url}/healthz", timeout=30)).status_code == 200
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start()
        await _still_works(c)


# ------------------------------------------------------------------ PII never leaks


RAW_VALUES = [
    "maria.gonzalez@example.com",
    "j.smith+billing@mail.example.org",
    "(415) 555-0132",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "123-45-6789",
]


async def test_no_raw_pii_in_any_event_log_line_or_database_row(app, pg_session_database):
    messages = [
        "You can reach me at maria.gonzalez@example.com or at (415) 555-0132.",
        "My card 4111 1111 1111 1111 was charged twice, the other card is 5500-0000-0000-0004.",
        "Send the itemized bill to j.smith+billing@mail.example.org, or call my UK number +44 20 7946 0958.",
        "My SSN is 123-45-6789 if you need it to verify.",
    ]
    seen: list[dict] = []
    async with SessionClient(app.ws_url, app.token) as c:
        seen.append(await c.start(customer_id="pii-test"))
        for text in messages:
            seen.extend(await c.say(text))
        suggestion = [e for e in seen if e["type"] == "assist.suggestion"][-1]
        await c.send(
            {
                "type": "suggestion.feedback",
                "suggestion_id": suggestion["suggestion_id"],
                "action": "edited",
                "final_text": "I have emailed maria.gonzalez@example.com the refund form.",
            }
        )
        seen.extend(await c.end())

    # 1. every event the client received
    wire = json.dumps(seen)
    for value in RAW_VALUES:
        assert value not in wire
    assert any(e["type"] == "redaction" for e in seen)

    # 2. every row of every table in the (real PostgreSQL) store
    engine = sqlalchemy.create_engine(pg_session_database)
    dump = []
    with engine.connect() as conn:
        meta = sqlalchemy.MetaData()
        meta.reflect(bind=conn)
        assert {"sessions", "utterances", "events", "escalations", "review_items"} <= set(meta.tables)
        for table in meta.sorted_tables:
            dump.extend(str(row) for row in conn.execute(table.select()))
    engine.dispose()
    at_rest = "\n".join(dump)
    for value in RAW_VALUES:
        assert value not in at_rest
    # the transcript and events, opened with the tenant's data key: redacted text, never the raw values
    session_id = seen[0]["session_id"]
    opened = json.dumps(
        [stored(app.settings, "utterances", session_id, "demo"), stored(app.settings, "events", session_id, "demo")],
        default=str,
    )
    assert "[EMAIL]" in opened and "[CARD]" in opened and "[EMAIL]" not in at_rest  # sealed at rest
    for value in RAW_VALUES:
        assert value not in opened

    # 3. every log line Ray and the replicas wrote in this session
    import ray

    logs_dir = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [p for p in logs_dir.rglob("*") if p.is_file()]
    assert files, "the Ray session has log files"
    for path in files:
        text = path.read_text(errors="ignore")
        for value in RAW_VALUES:
            assert value not in text, f"{value!r} leaked into {path}"
