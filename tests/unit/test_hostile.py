"""Hostile input, fuzzed with hypothesis: every parser of what clients and providers send (websocket frames,
protobuf messages, audio, Twilio forms, e-mail) either accepts or answers one of the stable error codes, and
never raises anything else; a real session connection fed garbage between real messages keeps every message
it accepted; per-tenant rate limits refuse without accepting."""

from __future__ import annotations

import json
import string
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.audio import AudioDecoder, BadAudio
from pipelines.channels import parse_email, parse_inbound_sms
from pipelines.errors import ERROR_CODES, ProtocolError, SwitchboardError
from pipelines.events import CLIENT_TYPES
from pipelines.limits import TenantLimiter
from pipelines.live import LiveHub
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.session import Pipeline
from pipelines.storage import SessionStore
from serve.auth import Principal
from serve.connection import SessionConnection, parse_frame

pytestmark = pytest.mark.unit

LIMIT = 65536
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["type", "text", "channel", "customer_id", "session_id", "audio", "encoding", "sample_rate", "channels",
     "suggestion_id", "action", "final_text", "message_id", "speaker", "x"]
)  # fmt: skip
client_events = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from([*CLIENT_TYPES, "session.started", "", "chat"]),
    st.dictionaries(field_names, json_values, max_size=6),
)


def stable(exc: BaseException) -> bool:
    return isinstance(exc, SwitchboardError) and exc.code in ERROR_CODES


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), client_events.map(json.dumps), json_values.map(json.dumps)))
def test_any_text_frame_is_an_event_or_a_stable_error(frame):
    try:
        event = parse_frame(frame, LIMIT)
    except ProtocolError as exc:
        assert stable(exc) and exc.code in {"bad_json", "unknown_type", "invalid_event", "message_too_large"}
        assert len(exc.message) < 600  # bounded, and built from field names, not echoed input
    else:
        assert event.type in CLIENT_TYPES


@settings(max_examples=200, deadline=None)
@given(client_events)
def test_protobuf_client_messages_map_to_the_same_errors(event):
    from serve.grpc_api import from_proto
    from serve.protos import load

    pb, _ = load()
    message = pb.ClientMessage()
    case = str(event["type"]).replace(".", "_")
    if case not in ("session_start", "chat_message", "suggestion_feedback", "session_end"):
        return
    for name, value in event.items():  # set what fits the proto's field types; the rest cannot be sent
        inner = getattr(message, case)
        field = inner.DESCRIPTOR.fields_by_name.get(name)
        if field is None or field.message_type is not None:
            continue
        try:
            setattr(inner, name, value)
        except (TypeError, ValueError):
            pass
    getattr(message, case).SetInParent()
    decoded = from_proto(message)
    try:
        parse_frame(decoded, LIMIT)
    except ProtocolError as exc:
        assert stable(exc)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_as_a_protobuf_message_never_reach_the_session_undecoded(data):
    from google.protobuf.message import DecodeError

    from serve.grpc_api import from_proto
    from serve.protos import load

    pb, _ = load()
    message = pb.ClientMessage()
    try:
        message.ParseFromString(data)  # what the gRPC proxy does before our code runs
    except DecodeError:
        return
    try:
        decoded = from_proto(message)
        if not isinstance(decoded, bytes):
            parse_frame(decoded, LIMIT)
    except ProtocolError as exc:
        assert stable(exc)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([("pcm_s16le", 16000, 1), ("pcm_s16le", 16000, 2), ("mulaw", 8000, 1), ("mulaw", 8000, 2)]),
    st.lists(st.binary(max_size=2000), max_size=6),
)
def test_garbage_audio_is_decoded_or_refused_never_crashes(fmt, frames):
    decoder = AudioDecoder(*fmt)
    for frame in frames:
        try:
            channels = decoder.decode(frame)
        except BadAudio as exc:
            assert stable(exc) and exc.code == "bad_audio_format"
        else:
            assert len(channels) == fmt[2]
            assert all(np.isfinite(c).all() and np.abs(c).max(initial=0) <= 1.0 for c in channels)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["MessageSid", "From", "To", "Body", "NumMedia", "MediaUrl0", "x"]),
                       st.text(max_size=40), max_size=7))  # fmt: skip
def test_twilio_forms_are_parsed_or_refused(form):
    try:
        sms = parse_inbound_sms(form)
    except ProtocolError as exc:
        assert stable(exc) and exc.code in {"invalid_event", "message_too_large"}
    else:
        assert sms.message_sid and sms.from_number and sms.to_number


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=3000),
        st.builds(
            lambda headers, body: (headers + "\n\n" + body).encode(),
            st.text(alphabet=string.printable, max_size=300),
            st.text(max_size=300),
        ),
    )
)
def test_any_bytes_as_email_are_parsed_or_bad_email(raw):
    try:
        email = parse_email(raw, max_bytes=1 << 20)
    except ProtocolError as exc:
        assert stable(exc) and exc.code in {"bad_email", "message_too_large"}
    else:
        assert email.from_address and (email.text or email.attachments)


def test_rate_limit_refuses_over_the_bucket_and_refills():
    now = [0.0]
    limiter = TenantLimiter(rate_per_s=2, burst=3, clock=lambda: now[0])
    assert [limiter.allow("acme") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("globex")  # tenants do not share a bucket
    with pytest.raises(ProtocolError) as err:
        limiter.check("acme")
    assert err.value.code == "rate_limited" and err.value.retryable
    now[0] += 1.0  # two more per second
    assert [limiter.allow("acme") for _ in range(3)] == [True, True, False]


# ---------------------------------------------------------------- a real connection fed garbage


class ScriptedTransport:
    """Frames in from a list, events out into a list (a websocket or gRPC stream in the real server)."""

    def __init__(self, frames):
        self.frames = list(frames)
        self.sent: list[dict] = []
        self.closed = False

    async def receive(self):
        return self.frames.pop(0) if self.frames else None

    async def send(self, event):
        self.sent.append(event if isinstance(event, dict) else event.wire())

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True


@pytest.fixture(scope="module")
def pipeline_env(tmp_path_factory, local_models, index_dir):
    from pipelines.config import Settings

    data = tmp_path_factory.mktemp("hostile")
    cfg = Settings(data_dir=data, index_dir=index_dir, tenant_messages_per_s=1000, tenant_burst=1000)
    return cfg, local_models


garbage = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=300),
    client_events.filter(lambda e: e["type"] not in ("session.start", "session.end")).map(json.dumps),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(garbage, min_size=1, max_size=6))
async def test_a_session_fed_garbage_keeps_every_message_it_accepted(pipeline_env, junk):
    cfg, models = pipeline_env
    store = SessionStore(cfg.sqlalchemy_url)
    await store.start()
    try:
        pipeline = Pipeline(models, store, ReviewQueue(store, load_or_create_key(cfg.resolved_review_key_file)), cfg)
        ingress = SimpleNamespace(
            pipeline=pipeline, settings=cfg, hub=LiveHub(), limiter=TenantLimiter(1000, 1000), vad=None
        )
        good = ["I was charged twice this month", "can you refund the second charge"]
        frames = [json.dumps({"type": "session.start", "channel": "chat", "customer_id": "fuzz"})]
        for i, text in enumerate(good):
            frames += junk[i::2]
            frames.append(json.dumps({"type": "chat.message", "text": text, "message_id": f"m{i}"}))
        frames.append(json.dumps({"type": "session.end"}))
        transport = ScriptedTransport(frames)
        await SessionConnection(ingress, transport, Principal("demo", "agent")).run()  # never raises

        errors = [e for e in transport.sent if e["type"] == "error"]
        assert all(e["code"] in ERROR_CODES and e["code"] != "internal_error" for e in errors), errors
        finals = [e for e in transport.sent if e["type"] == "transcript.final"]
        assert [f["message_id"] for f in finals if f.get("message_id") in ("m0", "m1")] == ["m0", "m1"]
        assert transport.sent[-1]["type"] == "session.ended"
        session_id = transport.sent[0]["session_id"]
        stored = [u["text"] for u in await store.transcript("demo", session_id)]
        assert [t for t in stored if t in good] == good  # nothing accepted was lost
    finally:
        await store.close()


async def test_a_client_that_stops_reading_is_disconnected_not_waited_for():
    """The websocket transport gives a send ``send_timeout_s``; a client that does not read (its TCP window
    full) is closed instead of holding the session's pipeline (the session stays stored and resumable)."""
    import asyncio

    from starlette.websockets import WebSocketState

    from pipelines.events import ErrorEvent
    from serve.ingress import _WsTransport

    class StuckSocket:
        client_state = WebSocketState.CONNECTED

        def __init__(self) -> None:
            self.closed_with = None

        async def send_text(self, text: str) -> None:
            await asyncio.Event().wait()  # the peer never reads

        async def close(self, code: int = 1000, reason: str = "") -> None:
            self.closed_with = (code, reason)
            self.client_state = WebSocketState.DISCONNECTED

    ws = StuckSocket()
    transport = _WsTransport(ws, send_timeout_s=0.2)  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    await transport.send(ErrorEvent(code="internal_error", message="x"))
    assert asyncio.get_running_loop().time() - started < 2.0
    assert ws.closed_with == (1013, "too slow: resume the session")
    await transport.send(ErrorEvent(code="internal_error", message="y"))  # a closed client costs nothing
