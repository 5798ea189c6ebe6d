"""OpenTelemetry traces: one trace per session.

    session (root; its parent is Ray Serve's request span when Serve tracing is on)
      ├─ event chat.message / suggestion.feedback      (pipelines/session.py Pipeline.handle)
      │    └─ stage guardrail / sentiment / planner / assist / escalation   (stages/base.py Stage.run)
      │         └─ deployment sentiment.score, embedder.embed, ...        (serve/handles.py, one per handle call)
      │              └─ route_to_replica → replica_handle_request   (Ray Serve's spans, the second in the replica)
      └─ utterance (voice finals: transcription, then the same stages)

``configure(settings)`` sets up the process's TracerProvider once: ``trace_exporter`` ``console`` (stdout),
``otlp`` (OTLP/gRPC to ``otlp_endpoint``) or ``none`` (spans are still made, so log lines carry trace ids,
but nothing is exported).

Into the replicas: ``serve.run`` turns on Ray Serve's (alpha) tracing with :func:`serve_span_processors` as its
exporter hook whenever ``trace_exporter`` is not ``none``. Serve then installs a provider in every replica and
carries the caller's current span (here: the ``deployment ...`` client span) in each request's metadata, so
the replica's ``replica_handle_request`` span descends from it (via Serve's ``route_to_replica``); ``configure``
adds the exporters to that provider.
Without it (Serve started by other means), the client-side ``deployment`` spans still time every call.

Span attributes are ids, names and numbers only (session id, tenant, channel, stage, model): never text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from .config import Settings

__all__ = [
    "configure",
    "serve_span_processors",
    "span_processors",
    "use_provider",
    "tracer",
    "span",
    "start_span",
    "use_span",
    "error_status",
    "current_ids",
    "SpanKind",
]

TRACER = "switchboard"
SERVE_HOOK = "pipelines.tracing:serve_span_processors"
_tracer: Tracer | None = None  # set by use_provider (tests); otherwise the global provider's
_configured = False
_lock = threading.Lock()


def span_processors(exporter: str, endpoint: str | None = None) -> list[SpanProcessor]:
    """Batching span processors for ``exporter`` (``console``, ``otlp`` or ``none``)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter == "console":
        return [BatchSpanProcessor(ConsoleSpanExporter())]
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return [BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter())]
    return []


def _provider(ratio: float) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    return TracerProvider(
        resource=Resource.create({"service.name": "switchboard"}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )


def configure(settings: Settings) -> None:
    """Give this process a TracerProvider exporting as ``settings`` say. Once per process: a provider Ray Serve's
    tracing hook installed already (with no exporters: :func:`serve_span_processors`) gets the exporters."""
    global _configured
    from opentelemetry.sdk.trace import TracerProvider

    with _lock:
        if _configured:
            return
        _configured = True
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = _provider(settings.trace_sample_ratio)
            trace.set_tracer_provider(provider)
        for processor in span_processors(settings.trace_exporter, settings.otlp_endpoint):
            provider.add_span_processor(processor)


def serve_span_processors() -> list[SpanProcessor]:
    """Ray Serve's tracing hook (``TracingConfig(exporter_import_path="pipelines.tracing:serve_span_processors")``,
    set by ``serve.run``): Serve installs the provider in its replicas and carries trace context into them;
    the exporters are added by :func:`configure` from each deployment's settings, so this returns none."""
    return []


def use_provider(provider: Any | None) -> None:
    """Send this module's spans to ``provider`` instead of the global one (tests: an in-memory exporter)."""
    global _tracer
    _tracer = provider.get_tracer(TRACER) if provider is not None else None


def tracer() -> Tracer:
    return _tracer or trace.get_tracer(TRACER)


def _attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    return {f"switchboard.{k}": v for k, v in attributes.items() if v is not None}


def _context(parent: Span | None) -> Any:
    return trace.set_span_in_context(parent) if parent is not None else None


@contextmanager
def span(
    name: str, parent: Span | None = None, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any
) -> Iterator[Span]:
    """A span that is current inside the block; a child of ``parent`` when given, else of the current span.
    Exceptions are recorded on it (type and status only; their messages may quote input)."""
    with tracer().start_as_current_span(
        name,
        context=_context(parent),
        kind=kind,
        attributes=_attributes(attributes),
        record_exception=False,
        set_status_on_exception=False,  # the SDK's status would quote the exception's message
    ) as s:
        try:
            yield s
        except Exception as exc:  # not CancelledError: a cancelled partial is not a failure
            s.set_status(error_status(exc))
            raise


def start_span(
    name: str, parent: Span | None = None, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any
) -> Span:
    """A span the caller ends (``span.end()``), not made current: the session's root, a stream's call."""
    return tracer().start_span(name, context=_context(parent), kind=kind, attributes=_attributes(attributes))


@contextmanager
def use_span(s: Span) -> Iterator[Span]:
    """Make ``s`` current inside the block without ending it."""
    with trace.use_span(s, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield s


def error_status(exc: BaseException) -> trace.Status:
    """An error status naming the exception's type (never its message, which may quote input)."""
    return trace.Status(trace.StatusCode.ERROR, type(exc).__name__)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span as hex, or None outside a recorded span."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
