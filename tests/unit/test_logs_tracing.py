"""Structured logs and traces from a real in-process pipeline: JSON lines with session and trace ids and no PII;
spans nested session → event → stage, and one client span per deployment call."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipelines import logs, tracing
from pipelines.config import Settings
from pipelines.events import ChatMessage, SessionStart
from pipelines.ports import ModelPorts
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.session import Pipeline
from pipelines.storage import SessionStore
from tests.fakes import Failing, Recorder

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("no_leaked_tasks")]

PII = "I'm Maria Gonzalez, email maria.g@example.com, card 4111 1111 1111 1111, phone (415) 555-0132"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


@pytest.fixture
def log_lines():
    logger = logging.getLogger("switchboard")
    saved = logger.level, logger.propagate
    stream = io.StringIO()
    handler = logs.install(Settings(), stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.level, logger.propagate = saved


@pytest.fixture
async def pipeline(settings, local_models):
    store = SessionStore(settings.sqlalchemy_url)
    await store.start()
    review = ReviewQueue(store, load_or_create_key(settings.resolved_review_key_file))
    ports = ModelPorts(
        guardrail=local_models.guardrail,
        sentiment=Failing(local_models.sentiment, error=RuntimeError("sentiment model down")),
        embedder=local_models.embedder,
        intent=local_models.intent,
        retriever=local_models.retriever,
    )
    yield Pipeline(ports, store, review, settings)
    await store.close()


async def test_log_lines_are_json_with_session_and_trace_ids(pipeline, spans, log_lines):
    rec = Recorder()
    state, _ = await pipeline.start_session("demo", SessionStart(channel="chat", customer_id="c-1"))
    await pipeline.handle(
        state, ChatMessage(text=PII), rec
    )  # the sentiment stage fails: a warning, in its span
    await pipeline.end_session(state, rec)

    lines = log_lines()
    failed = [
        line for line in lines if line["message"] == "stage sentiment failed (RuntimeError), using fallback"
    ]
    assert len(failed) == 1
    line = failed[0]
    assert {"time", "level", "logger", "message"} <= set(line)
    assert line["level"] == "WARNING" and line["logger"] == "switchboard.pipeline"
    assert line["session_id"] == state.session_id and line["tenant"] == "demo"
    assert line["utterance_id"] == rec.of("transcript.final")[0]["utterance_id"]
    stage = next(s for s in spans.get_finished_spans() if s.name == "stage sentiment")
    assert line["trace_id"] == format(stage.context.trace_id, "032x")
    assert line["span_id"] == format(stage.context.span_id, "016x")
    text = "\n".join(json.dumps(entry) for entry in lines)
    for secret in ("Maria", "Gonzalez", "maria.g@example.com", "4111", "555-0132"):
        assert secret not in text


def test_extra_fields_outside_the_allow_list_are_dropped(log_lines):
    log = logging.getLogger("switchboard.test")
    token = logs.bind_session("ses_0123456789abcdef", "acme")
    try:
        log.warning("lookup failed", extra={"session_id": "ses_0123456789abcdef", "email": "maria.g@example.com",
                                            "transcript": PII, "stage": "assist"})  # fmt: skip
        try:
            raise ValueError(f"could not parse {PII}")
        except ValueError:
            log.exception("parse failed")
    finally:
        logs.unbind_session(token)
    first, second = log_lines()
    assert first["session_id"] == "ses_0123456789abcdef" and first["tenant"] == "acme"
    assert first["stage"] == "assist"
    assert first["dropped_extra"] == ["email", "transcript"]
    assert "email" not in first and "transcript" not in first
    assert second["exc_type"] == "ValueError" and second["stack"]
    for line in (first, second):
        assert "Maria" not in json.dumps(line) and "maria.g@" not in json.dumps(line)
    assert "trace_id" not in first  # no span is current here


async def test_spans_nest_session_event_stage(pipeline, spans):
    rec = Recorder()
    state, _ = await pipeline.start_session("demo", SessionStart(channel="chat", customer_id="c-1"))
    await pipeline.handle(state, ChatMessage(text="I was charged twice on my bill"), rec)
    await pipeline.end_session(state, rec)

    finished = spans.get_finished_spans()
    by_name = {s.name: s for s in finished}
    session = by_name["session"]
    event = by_name["event chat.message"]
    assert session.parent is None
    assert session.attributes["switchboard.session_id"] == state.session_id
    assert session.attributes["switchboard.channel"] == "chat"
    assert event.parent.span_id == session.context.span_id
    for stage in ("guardrail", "sentiment", "planner", "assist", "escalation"):
        span = by_name[f"stage {stage}"]
        assert span.parent.span_id == event.context.span_id, stage
        assert span.attributes["switchboard.stage"] == stage
    assert by_name["stage sentiment"].attributes["switchboard.fallback"] == "RuntimeError"
    assert by_name["session.end"].parent.span_id == session.context.span_id
    assert {s.context.trace_id for s in finished} == {session.context.trace_id}  # one trace per session
    for span in finished:  # attributes are ids, names and numbers: never the customer's words
        assert "charged" not in json.dumps({k: str(v) for k, v in span.attributes.items()})


class _FakeHandle:
    """A Serve DeploymentHandle's surface as serve/handles.py uses it (``handle.<method>.remote(*args)``)."""

    deployment_name = "sentiment"

    def __init__(self) -> None:
        self.parents: list[str | None] = []

    def options(self, **_: object) -> _FakeHandle:
        return self

    def __getattr__(self, method: str) -> object:
        handle = self

        class Bound:
            def remote(self, *args: object) -> object:
                ids = tracing.current_ids()  # what Serve would carry to the replica
                handle.parents.append(ids[1] if ids else None)

                if method == "stream":

                    async def chunks():
                        for word in ("a", "b"):
                            yield word

                    return chunks()

                async def result() -> str:
                    return f"{method}:{len(args)}"

                return result()

        return Bound()


async def test_every_deployment_call_is_a_client_span(spans):
    from serve.handles import GeneratorHandlePort, HandlePort

    handle = _FakeHandle()
    port, stream = HandlePort(handle), GeneratorHandlePort(handle)
    with tracing.span("stage sentiment") as stage:
        assert await port.score("text", "champion") == "score:2"
        assert [c async for c in stream.stream("request")] == ["a", "b"]
    calls = [s for s in spans.get_finished_spans() if s.name.startswith("deployment ")]
    assert [s.name for s in calls] == ["deployment sentiment.score", "deployment sentiment.stream"]
    for span in calls:
        assert span.parent.span_id == stage.get_span_context().span_id
        assert span.kind.name == "CLIENT"
    # the call's own span is current while the request is sent: Serve propagates it into the replica
    assert handle.parents == [format(s.context.span_id, "016x") for s in calls]


def test_fields_every_record_carries_are_not_reported_as_dropped_extras():
    """A library's record factory (vLLM adds ``vllm_process_name`` to every record) is not an ``extra`` of ours."""
    import logging as stdlib_logging

    from pipelines.logs import ExtraFilter

    original = stdlib_logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = original(*args, **kwargs)
        record.vllm_process_name = "EngineCore"
        return record

    stdlib_logging.setLogRecordFactory(factory)
    try:
        record = stdlib_logging.getLogRecordFactory()("switchboard.x", 20, "f", 1, "msg", None, None)
        record.__dict__["email"] = "maria.g@example.com"
        ExtraFilter().filter(record)
        assert record.__dict__["dropped_extra"] == ["email"] and "email" not in record.__dict__
    finally:
        stdlib_logging.setLogRecordFactory(original)
