from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipelines import events as ev

pytestmark = pytest.mark.unit


def test_committed_schema_matches_the_models():
    committed = json.loads(ev.SCHEMA_PATH.read_text())
    assert committed == json.loads(json.dumps(ev.json_schema(), sort_keys=True)), (
        "schemas/events.schema.json is stale: run `make schema`"
    )


def test_schema_names_every_protocol_event():
    text = ev.SCHEMA_PATH.read_text()
    for t in (
        "session.start",
        "chat.message",
        "suggestion.feedback",
        "session.end",
        "session.started",
        "transcript.partial",
        "transcript.final",
        "redaction",
        "sentiment",
        "intent",
        "assist.suggestion",
        "escalation",
        "error",
        "session.ended",
    ):
        assert f'"{t}"' in text


def test_client_events_parse_by_type():
    start = ev.parse_client_event(
        {
            "type": "session.start",
            "channel": "voice",
            "customer_id": "c1",
            "audio": {"encoding": "mulaw", "sample_rate": 8000},
        }
    )
    assert (
        isinstance(start, ev.SessionStart) and start.audio.sample_rate == 8000 and start.audio.channels == 1
    )
    msg = ev.parse_client_event({"type": "chat.message", "text": "hi"})
    assert isinstance(msg, ev.ChatMessage) and msg.speaker == "customer"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "session.start", "channel": "fax", "customer_id": "c"},
        {"type": "session.start", "channel": "chat"},
        {"type": "chat.message", "text": ""},
        {"type": "chat.message", "text": "hi", "surprise": 1},
        {"type": "suggestion.feedback", "suggestion_id": "s", "action": "maybe"},
        {"type": "session.start", "channel": "voice", "customer_id": "c", "audio": {"sample_rate": 44100}},
    ],
)
def test_invalid_client_events_are_rejected(frame):
    with pytest.raises(ValidationError):
        ev.parse_client_event(frame)


def test_wire_form_has_the_protocol_field_names():
    wire = ev.Suggestion(
        suggestion_id="s",
        utterance_id="u",
        text="t",
        articles=[ev.Article(id="a", title="A", score=0.5)],
        source="articles_only",
        latency_ms=12.5,
    ).wire()
    assert wire == {
        "type": "assist.suggestion",
        "suggestion_id": "s",
        "utterance_id": "u",
        "text": "t",
        "articles": [{"id": "a", "title": "A", "score": 0.5}],
        "source": "articles_only",
        "latency_ms": 12.5,
    }
    err = ev.ErrorEvent(code="bad_json", message="m").wire()
    assert set(err) == {"type", "code", "message", "retryable"}
