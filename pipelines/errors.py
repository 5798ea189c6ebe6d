"""The small, documented error tree. Every failure reaches the client as an ``error`` event with one of
these stable codes; the code, not the message, is the contract."""

from __future__ import annotations

from .events import ErrorEvent

__all__ = ["SwitchboardError", "ProtocolError", "AuthError", "StageError", "ERROR_CODES"]

#: Every stable error code, what it means and whether retrying the same thing can succeed.
ERROR_CODES: dict[str, tuple[str, bool]] = {
    "unauthorized": ("missing or invalid credentials", False),
    "bad_json": ("a text frame that is not a JSON object", False),
    "unknown_type": ("a JSON frame whose `type` is not a client event", False),
    "invalid_event": ("a known event with missing or invalid fields", False),
    "session_not_started": ("an event arrived before `session.start`", False),
    "session_already_started": ("a second `session.start` on the same connection", False),
    "session_not_found": ("`session.start` asked to resume a session this tenant does not have", False),
    "message_too_large": ("a frame over the size limit (64 KiB by default)", False),
    "unexpected_binary": ("a binary frame on a text-only session", False),
    "bad_audio_format": (
        "audio that is not the declared format (truncated frame, container file, ...)",
        False,
    ),
    "asr_unavailable": (
        "speech recognition is failing; the audio is kept and transcribed when it recovers",
        True,
    ),
    "channel_unavailable": ("the requested channel is not enabled on this server", False),
    "unknown_suggestion": ("feedback for a suggestion this session never received", False),
    "pii_check_failed": ("PII detection failed; the message is held for manual review, not processed", True),
    "stage_failed": ("an analysis stage failed and its fallback was used", True),
    "internal_error": ("an unexpected server error; the connection stays usable", True),
    "forbidden": ("valid credentials whose role may not do this (e.g. a customer token watching a session)", False),
    "bad_signature": ("a webhook whose provider signature (e.g. X-Twilio-Signature) does not verify", False),
    "bad_email": ("an inbound e-mail that is not parseable RFC 822 or has no sender or text", False),
    "outbound_failed": ("a reply could not be delivered through the channel's provider; it is kept", True),
    "crm_unavailable": ("the CRM connector failed; the session goes on and the CRM update is retried", True),
    "session_ended": ("the session has ended; start or resume one", False),
    "not_found": ("an HTTP resource that does not exist (an agent, a page)", False),
    "rate_limited": ("the tenant is over its message rate; nothing was accepted, send it again shortly", True),
    "audit_unavailable": ("the audit trail could not record this read, so nothing was shown; try again", True),
    "legal_hold": ("the data is under a legal hold and cannot be deleted until the hold is released", False),
    "server_busy": (
        "no capacity for a new session: the queue is full or the wait ran out; nothing was started, try again",
        True,
    ),
    "store_unavailable": ("the session store is down: this read cannot be served yet (writes are queued)", True),
}


class SwitchboardError(Exception):
    """Base error. ``code`` is one of ERROR_CODES."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, utterance_id: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if self.code not in ERROR_CODES:
            raise ValueError(f"unknown error code {self.code!r}")
        self.message = message
        self.utterance_id = utterance_id

    @property
    def retryable(self) -> bool:
        return ERROR_CODES[self.code][1]

    def to_event(self) -> ErrorEvent:
        return ErrorEvent(
            code=self.code, message=self.message, retryable=self.retryable, utterance_id=self.utterance_id
        )


class ProtocolError(SwitchboardError):
    """The client broke the wire contract. The connection stays open."""

    code = "invalid_event"


class AuthError(SwitchboardError):
    """Credentials are missing or wrong. The connection is closed after the error event."""

    code = "unauthorized"


class StageError(SwitchboardError):
    """A pipeline stage failed in a way the client should know about."""

    code = "stage_failed"
