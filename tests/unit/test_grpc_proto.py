"""switchboard.v1 protobuf ↔ the pydantic events: the .proto stays in step with pipelines/events.py, and
every event survives the trip through protobuf unchanged."""

from __future__ import annotations

import typing

import pytest

from pipelines import events as ev
from serve.connection import parse_frame
from serve.grpc_api import client_message, from_proto, server_event_dict, to_proto
from serve.protos import load

pytestmark = pytest.mark.unit

pb, pb_grpc = load()


def _server_models() -> list[type[ev._Event]]:
    return list(typing.get_args(ev.ServerEvent))


def _client_models() -> list[type[ev._Event]]:
    return list(typing.get_args(typing.get_args(ev.ClientEvent)[0]))


def _case(model: type[ev._Event]) -> str:
    return model.model_fields["type"].default.replace(".", "_")


@pytest.mark.parametrize("model", _server_models(), ids=lambda m: m.__name__)
def test_every_server_event_field_is_in_the_proto(model):
    oneof = {f.name: f for f in pb.ServerMessage.DESCRIPTOR.oneofs_by_name["event"].fields}
    assert _case(model) in oneof, f"ServerMessage has no `{_case(model)}` case for {model.__name__}"
    proto_fields = set(oneof[_case(model)].message_type.fields_by_name)
    missing = set(model.model_fields) - {"type"} - proto_fields
    assert not missing, f"{model.__name__} fields missing from sessions.proto: {sorted(missing)}"


@pytest.mark.parametrize("model", _client_models(), ids=lambda m: m.__name__)
def test_every_client_event_field_is_in_the_proto(model):
    oneof = {f.name: f for f in pb.ClientMessage.DESCRIPTOR.oneofs_by_name["event"].fields}
    proto_fields = set(oneof[_case(model)].message_type.fields_by_name)
    assert set(model.model_fields) - {"type"} <= proto_fields


SAMPLES = [
    ev.SessionStarted(session_id="ses_1", tenant="demo", channel="chat", resumed=False, variant="champion"),
    ev.TranscriptPartial(utterance_id="utt_1", text="I need my", speaker="S1", start=0.5, end=1.25),
    ev.TranscriptFinal(
        utterance_id="utt_1",
        text="I need my records, call [PHONE]",
        speaker="S2",
        start=0.5,
        end=2.0,
        confidence=0.0,
        latency_ms=412.5,
        words=[ev.TranscriptWord(word="I", start=0.5, end=0.6, confidence=0.9)],
    ),
    ev.Redaction(utterance_id="utt_1", entities=[ev.RedactedEntity(type="PHONE", start=24, end=31)], flags=[]),
    ev.Sentiment(utterance_id="utt_1", label="negative", score=-0.75, emotions={"anger": 0.5}, model="m@3"),
    ev.Intent(utterance_id="utt_1", intent="records_request", confidence=0.91, entities=[], model="rules"),
    ev.Suggestion(
        suggestion_id="sug_1",
        utterance_id="utt_1",
        text="Records transfers are free.",
        articles=[ev.Article(id="kb-1", title="Records", score=0.8)],
        source="generated",
        latency_ms=90.0,
        final=False,
        citations=["kb-1"],
        grounding={"grounded": True, "support": 0.8},
        tokens={"prompt": 120, "completion": 30},
    ),
    ev.AssistDelta(suggestion_id="sug_1", utterance_id="utt_1", text="Records transfers", index=0),
    ev.Escalation(utterance_id="utt_1", reason="anger", queue="supervisor", priority="urgent", factors=["clv"]),
    ev.Routing(status="queued", queue="billing", priority="high", notice="About 3 minutes.", position=2, expected_wait_s=180.0),
    ev.ErrorEvent(code="bad_json", message="frame is not valid JSON", retryable=False),
    ev.SessionEnded(session_id="ses_1", summary={"turns": 2.0, "assist": {"generated": 1.0}}),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_server_events_round_trip(event):
    message = pb.ServerMessage.FromString(to_proto(event).SerializeToString())
    assert server_event_dict(message) == event.wire()


def test_final_false_is_kept_apart_from_absent():
    """`final: false` (a generated version follows) must not collapse into `final` absent."""
    first = SAMPLES[6]
    assert server_event_dict(to_proto(first))["final"] is False
    assert "final" not in server_event_dict(to_proto(first.model_copy(update={"final": None})))


def test_snapshot_carries_event_dicts():
    snap = ev.SessionSnapshot(
        session_id="ses_1", channel="sms", customer_id="c", status="live", events=[SAMPLES[0].wire()]
    )
    assert server_event_dict(to_proto(snap))["events"] == [SAMPLES[0].wire()]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "session.start", "channel": "voice", "customer_id": "c1",
         "audio": {"encoding": "mulaw", "sample_rate": 8000, "channels": 2}},
        {"type": "session.start", "channel": "chat", "customer_id": "c1", "session_id": "ses_x"},
        {"type": "chat.message", "text": "hello", "message_id": "m1"},
        {"type": "suggestion.feedback", "suggestion_id": "sug_1", "action": "edited", "final_text": "ok"},
        {"type": "session.end"},
    ],
    ids=lambda e: e["type"],
)
def test_client_events_round_trip_and_validate(event):
    message = pb.ClientMessage.FromString(client_message(event).SerializeToString())
    decoded = from_proto(message)
    assert decoded == event
    assert parse_frame(decoded, 65536).wire() == ev.parse_client_event(event).wire()


def test_audio_and_empty_messages():
    assert from_proto(client_message(b"\x00\x01" * 160)) == b"\x00\x01" * 160
    from pipelines.errors import ProtocolError

    with pytest.raises(ProtocolError) as err:
        from_proto(pb.ClientMessage())
    assert err.value.code == "invalid_event"


def test_bad_values_get_the_websocket_error_codes():
    from pipelines.errors import ProtocolError

    decoded = from_proto(client_message({"type": "suggestion.feedback", "suggestion_id": "s", "action": "loved"}))
    with pytest.raises(ProtocolError) as err:
        parse_frame(decoded, 65536)
    assert err.value.code == "invalid_event" and "action" in err.value.message
