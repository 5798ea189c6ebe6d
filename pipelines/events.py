"""The switchboard event vocabulary (PROTOCOL.md v1) as typed pydantic models.

Every message of a session is one of these events. The websocket JSON, the (future) protobuf and the stored
event log are views of them. Field names are the wire contract: add fields freely, never rename or drop one
without bumping ``PROTOCOL_VERSION``.

Run ``python -m pipelines.events`` to (re)write the JSON schema in ``schemas/events.schema.json``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "PROTOCOL_VERSION",
    "AudioFormat",
    "SessionStart",
    "ChatMessage",
    "SuggestionFeedback",
    "SessionEnd",
    "ClientEvent",
    "SessionStarted",
    "SessionQueued",
    "TranscriptPartial",
    "TranscriptFinal",
    "TranscriptWord",
    "RedactedEntity",
    "Redaction",
    "Sentiment",
    "Entity",
    "Intent",
    "Article",
    "Suggestion",
    "AssistDelta",
    "Escalation",
    "ErrorEvent",
    "Routing",
    "SessionSnapshot",
    "SessionEnded",
    "ServerEvent",
    "parse_client_event",
    "new_id",
    "json_schema",
]

PROTOCOL_VERSION = "v1"

Channel = Literal["voice", "chat", "sms", "email"]


def new_id(prefix: str) -> str:
    """A short, sortable-enough unique id such as ``utt_1a2b3c4d5e6f``."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict sent on the wire (``type`` first)."""
        return self.model_dump(mode="json", exclude_none=True)


# ---------------------------------------------------------------- client -> server


class AudioFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    encoding: Literal["pcm_s16le", "mulaw"] = "pcm_s16le"
    sample_rate: Literal[16000, 8000] = 16000
    channels: Literal[1, 2] = 1


class SessionStart(_Event):
    """Must be the first event of a session. The tenant comes from the token, never from the client."""

    type: Literal["session.start"] = "session.start"
    channel: Channel
    customer_id: str = Field(min_length=1, max_length=128)
    session_id: str | None = Field(default=None, max_length=64, description="resume an existing session")
    audio: AudioFormat | None = None


class ChatMessage(_Event):
    type: Literal["chat.message"] = "chat.message"
    text: str = Field(min_length=1)
    message_id: str | None = Field(default=None, max_length=128)
    speaker: Literal["customer", "agent"] = Field(
        default="customer", description="who wrote it; agent turns are redacted and stored but not analysed"
    )


class SuggestionFeedback(_Event):
    type: Literal["suggestion.feedback"] = "suggestion.feedback"
    suggestion_id: str = Field(min_length=1, max_length=64)
    action: Literal["accepted", "rejected", "edited"]
    final_text: str | None = None


class SessionEnd(_Event):
    type: Literal["session.end"] = "session.end"


ClientEvent = Annotated[
    SessionStart | ChatMessage | SuggestionFeedback | SessionEnd,
    Field(discriminator="type"),
]
_client_adapter: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)
CLIENT_TYPES = ("session.start", "chat.message", "suggestion.feedback", "session.end")


def parse_client_event(data: dict[str, Any]) -> SessionStart | ChatMessage | SuggestionFeedback | SessionEnd:
    """Validate a decoded client frame. Raises pydantic.ValidationError."""
    return _client_adapter.validate_python(data)


# ---------------------------------------------------------------- server -> client


class SessionStarted(_Event):
    type: Literal["session.started"] = "session.started"
    session_id: str
    tenant: str
    channel: Channel
    resumed: bool = False
    variant: str | None = Field(
        default=None, description="A/B arm of this session's models (champion or challenger)"
    )


class SessionQueued(_Event):
    """The server is at capacity: this new session waits and starts (``session.started``) as soon as there is
    room; ``server_busy`` if the wait runs out. Sent once, in place of ``session.started``, when the wait begins."""

    type: Literal["session.queued"] = "session.queued"
    position: int = Field(description="place in the queue, 1 = next")
    reason: Literal["sessions", "load"] = Field(description="too many open sessions, or too much work in flight")
    notice: str = Field(description="customer-facing text about the delay")
    timeout_s: float = Field(description="longest wait before `server_busy`")


class TranscriptPartial(_Event):
    type: Literal["transcript.partial"] = "transcript.partial"
    utterance_id: str
    text: str
    speaker: str
    start: float
    end: float


class TranscriptWord(BaseModel):
    """One word of a redacted voice transcript; a redacted entity is one word such as ``[PHONE]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    word: str
    start: float
    end: float
    confidence: float = Field(ge=0.0, le=1.0)


class TranscriptFinal(_Event):
    """A finished utterance: a voice segment, or a chat/SMS/email message. Text is already redacted."""

    type: Literal["transcript.final"] = "transcript.final"
    utterance_id: str
    text: str
    speaker: str
    start: float
    end: float
    confidence: float = Field(ge=0.0, le=1.0)
    latency_ms: float
    message_id: str | None = None
    words: list[TranscriptWord] | None = Field(default=None, description="voice: word timings (seconds)")


class RedactedEntity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    start: int
    end: int


class Redaction(_Event):
    type: Literal["redaction"] = "redaction"
    utterance_id: str
    entities: list[RedactedEntity]
    flags: list[str] = Field(default_factory=list, description="content-policy flags, e.g. abuse")


class Sentiment(_Event):
    type: Literal["sentiment"] = "sentiment"
    utterance_id: str
    label: Literal["negative", "neutral", "positive"]
    score: float = Field(ge=-1.0, le=1.0)
    emotions: dict[str, float] | None = None
    model: str
    variant: str | None = Field(
        default=None, description="A/B arm that scored it: champion, challenger or rules"
    )


class Entity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    value: str


class Intent(_Event):
    type: Literal["intent"] = "intent"
    utterance_id: str
    intent: str
    confidence: float = Field(ge=0.0, le=1.0)
    entities: list[Entity] = Field(default_factory=list)
    predicted: str | None = Field(
        default=None, description="best raw guess when confidence fell below threshold"
    )
    model: str = "rules"
    variant: str | None = Field(
        default=None, description="A/B arm that predicted it: champion, challenger or rules"
    )


class Article(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    title: str
    score: float


class Suggestion(_Event):
    type: Literal["assist.suggestion"] = "assist.suggestion"
    suggestion_id: str
    utterance_id: str
    text: str
    articles: list[Article]
    source: Literal["generated", "cache", "articles_only"]
    latency_ms: float
    fallback: str | None = Field(default=None, description="set when a degraded path produced it")
    reranker: str | None = Field(
        default=None, description="cross-encoder (name@version) that ordered the articles; unset: FAISS order"
    )
    final: bool | None = Field(
        default=None,
        description="false: a generated version of this suggestion follows (`assist.delta` events, then an "
        "`assist.suggestion` with the same `suggestion_id` and `final: true` that replaces this one); "
        "absent: nothing follows",
    )
    model: str | None = Field(default=None, description="generator (name@version) behind generated text")
    citations: list[str] | None = Field(default=None, description="ids of the articles the generated text uses")
    grounding: dict[str, Any] | None = Field(
        default=None, description="the grounding check: `grounded`, `support` (0-1), `reason` when rejected"
    )
    tokens: dict[str, int] | None = Field(default=None, description="`prompt` and `completion` tokens spent")
    first_token_ms: float | None = Field(
        default=None, description="message received -> first generated token"
    )
    prompt_version: str | None = Field(default=None, description="prompt template (registry name@version)")


class AssistDelta(_Event):
    """A streamed piece of a suggestion being generated. Pieces are whole phrases, each redacted by the
    guardrail before it is sent; the final ``assist.suggestion`` (same ``suggestion_id``) is authoritative and
    may replace the streamed text with the articles when the grounding check rejects it."""

    type: Literal["assist.delta"] = "assist.delta"
    suggestion_id: str
    utterance_id: str
    text: str
    index: int


class Escalation(_Event):
    type: Literal["escalation"] = "escalation"
    utterance_id: str
    reason: str
    queue: str
    priority: Literal["low", "normal", "high", "urgent"]
    rule: str | None = None
    factors: list[str] | None = Field(
        default=None,
        description="feature rules (customer value, history) that raised the priority or rerouted",
    )


class Routing(_Event):
    """Where the conversation went after an escalation: to an agent, into a queue, or over to supervisors.
    ``notice`` is the customer-facing text (expected delay); it holds no personal data."""

    type: Literal["routing"] = "routing"
    status: Literal["assigned", "queued", "overflow"]
    queue: str
    priority: Literal["low", "normal", "high", "urgent"]
    notice: str
    agent_id: str | None = None
    position: int | None = None
    expected_wait_s: float | None = None
    reason: str | None = None
    utterance_id: str | None = None


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    code: str
    message: str
    retryable: bool = False
    utterance_id: str | None = None


class SessionEnded(_Event):
    type: Literal["session.ended"] = "session.ended"
    session_id: str
    summary: dict[str, Any] | None = None


class SessionSnapshot(_Event):
    """First event on a watch connection (agent desktop, `switchboard tail`): the session so far."""

    type: Literal["session.snapshot"] = "session.snapshot"
    session_id: str
    channel: Channel
    customer_id: str
    status: Literal["live", "ended"]
    events: list[dict[str, Any]]


ServerEvent = (
    SessionStarted
    | SessionQueued
    | TranscriptPartial
    | TranscriptFinal
    | Redaction
    | Sentiment
    | Intent
    | Suggestion
    | AssistDelta
    | Escalation
    | Routing
    | ErrorEvent
    | SessionSnapshot
    | SessionEnded
)


def json_schema() -> dict[str, Any]:
    """One JSON schema document holding every client and server event."""
    client = TypeAdapter(ClientEvent).json_schema(ref_template="#/$defs/{model}")
    server = TypeAdapter(Annotated[ServerEvent, Field(discriminator="type")]).json_schema(
        ref_template="#/$defs/{model}"
    )
    defs = {**client.pop("$defs", {}), **server.pop("$defs", {})}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"switchboard wire protocol {PROTOCOL_VERSION}",
        "$defs": defs,
        "properties": {"client": client, "server": server},
    }


SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "events.schema.json"


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":  # pragma: no cover
    import argparse

    argparse.ArgumentParser(description="Write the JSON schema of the switchboard events.").parse_args()
    print(f"wrote {write_schema()}")
