"""Structured JSON logs: one object per line with ``time``, ``level``, ``logger``, ``message``, the session
(``session_id``, ``tenant``) and the trace (``trace_id``, ``span_id`` of the current OpenTelemetry span).

PII: log messages in this code base name error types and ids, never customer text. As a second line of
defence, :class:`ExtraFilter` drops every ``extra={...}`` field that is not in :data:`ALLOWED_EXTRA`, and an
exception is logged as its type and stack frames, never its message (which may quote input).

``install(settings)`` puts the handler on the ``switchboard`` logger (the ingress, every deployment and
``serve.run`` call it); :func:`bind_session` makes every later log line of the current task (and of the tasks
it starts) carry the session.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import tracing

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["ALLOWED_EXTRA", "JsonFormatter", "ExtraFilter", "install", "bind_session", "unbind_session"]

#: ``extra`` fields a log line may carry: ids, names, codes and numbers, never text from a conversation.
ALLOWED_EXTRA = frozenset(
    {
        "session_id",
        "utterance_id",
        "suggestion_id",
        "tenant",
        "channel",
        "stage",
        "deployment",
        "model",
        "variant",
        "code",
        "queue",
        "priority",
        "status",
        "attempt",
        "latency_ms",
        "duration_ms",
    }
)
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_session: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "switchboard_session", default=None
)


def bind_session(session_id: str, tenant: str) -> contextvars.Token:
    """Log lines of the current task from here on (and of tasks it creates) carry this session."""
    return _session.set((session_id, tenant))


def unbind_session(token: contextvars.Token) -> None:
    _session.reset(token)


_FACTORY_FIELDS: dict[int, frozenset[str]] = {}


def _factory_fields() -> frozenset[str]:
    """Attributes the installed record factory puts on every record (vLLM adds ``vllm_process_name``)."""
    factory = logging.getLogRecordFactory()
    fields = _FACTORY_FIELDS.get(id(factory))
    if fields is None:
        fields = _FACTORY_FIELDS[id(factory)] = frozenset(factory("", 0, "", 0, "", None, None).__dict__)
    return fields


class ExtraFilter(logging.Filter):
    """Drops ``extra`` fields that are not allow-listed (their names are kept in ``dropped_extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        known = _STANDARD | _factory_fields()  # what every record carries, not an `extra` of ours
        dropped = [
            k
            for k in record.__dict__
            if k not in known and k not in ALLOWED_EXTRA and not k.startswith("_")
        ]  # `_...`: a logging framework's own bookkeeping (Ray's `_ray_timestamp_ns`), never printed
        for key in dropped:
            del record.__dict__[key]
        if dropped:
            record.__dict__["dropped_extra"] = sorted(dropped)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        bound = _session.get()
        if bound is not None:
            out["session_id"], out["tenant"] = bound
        ids = tracing.current_ids()
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        for key, value in record.__dict__.items():
            if key in ALLOWED_EXTRA or key == "dropped_extra":
                out[key] = value if isinstance(value, int | float | bool | list) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["stack"] = [
                f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(record.exc_info[2])
            ][-10:]
        return json.dumps(out, ensure_ascii=False)


def install(settings: Settings | None = None, *, stream: Any = None) -> logging.Handler:
    """Log ``switchboard.*`` as JSON lines (or plain text with ``log_format: text``) to ``stream`` (stderr).
    Idempotent: a second call replaces the handler it installed before."""
    level = settings.log_level if settings is not None else "INFO"
    fmt = settings.log_format if settings is not None else "json"
    logger = logging.getLogger("switchboard")
    for old in [h for h in logger.handlers if getattr(h, "_switchboard", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._switchboard = True  # type: ignore[attr-defined]
    handler.addFilter(ExtraFilter())
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # one line per record, not a second plain one from the root handler
    return handler
