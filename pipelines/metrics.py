"""Every switchboard metric, defined once (name, type, help, labels, buckets), and the helpers that record them.

Two backends, one definition:

- always a ``prometheus_client`` collector in :data:`REGISTRY` (this module's own registry), so the ingress's
  ``GET /metrics`` renders this replica's values (:func:`render`), and tests read them without Ray;
- additionally, inside a Ray worker (a Serve replica), a ``ray.util.metrics`` Counter / Gauge / Histogram, which
  Ray exports on each node's metrics port with the ``ray_`` namespace prefix: ``switchboard_stage_latency_ms``
  is scraped as ``ray_switchboard_stage_latency_ms_bucket`` / ``_sum`` / ``_count`` there.

Names as Prometheus stores them: counters get ``_total`` (``switchboard_errors`` → ``switchboard_errors_total``),
histograms ``_bucket``, ``_sum`` and ``_count``, gauges keep their name (:func:`exposed_names`).

Labels are low-cardinality by construction: tenant, channel, model (name@version, ``rules``, ...), stage, queue,
error code, action. Never a session id, customer id or text: a label value is whatever the caller passes, so
the helpers below take only those fields. ``snapshot()`` returns this process's counter totals.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "MetricDef",
    "METRICS",
    "REGISTRY",
    "CONTENT_TYPE",
    "RAY_PREFIX",
    "exposed_names",
    "render",
    "snapshot",
    # sessions and client events
    "session_started",
    "session_ended",
    "count_event",
    "count_error",
    # latency
    "observe_stage",
    "observe_transcription",
    "observe_asr",
    "observe_assist",
    "observe_generation",
    # analysis and outcomes
    "observe_sentiment",
    "count_turn",
    "count_escalation",
    "set_queue_depth",
    # models and suggestions
    "count_prediction",
    "count_shadow",
    "count_suggestion",
    "count_feedback",
    "count_tokens",
    "count_reply_cache",
    # overload and cost
    "set_overload",
    "count_shed",
    "count_queued",
    "set_session_queue",
    "observe_queue_wait",
    "observe_model_batch",
    "observe_session_tokens",
]

Kind = Literal["counter", "gauge", "histogram"]
CONTENT_TYPE = CONTENT_TYPE_LATEST
RAY_PREFIX = "ray_"  # what Ray's metrics port puts in front of every application metric


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    def exposed(self, prefix: str = "") -> tuple[str, ...]:
        """The series names Prometheus stores for this metric (``prefix`` ``ray_`` for Ray's metrics port)."""
        base = prefix + self.name
        if self.kind == "counter":
            return (f"{base}_total",)
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)


_MS = (5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0, 10000.0)
_SLO = (50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 10000.0, 30000.0)
_L = ("tenant", "channel")
_LM = ("tenant", "channel", "model")

METRICS: dict[str, MetricDef] = {
    m.name: m
    for m in (
        # ------------------------------------------------------------ sessions and client events
        MetricDef("switchboard_concurrent_sessions", "gauge", "Sessions open on this replica", _L),
        MetricDef("switchboard_sessions_started", "counter", "Sessions started or resumed", _L),
        MetricDef("switchboard_sessions_ended", "counter", "Sessions ended, by how", (*_L, "status")),
        MetricDef(
            "switchboard_session_duration_seconds",
            "histogram",
            "Session length (connection start to end)",
            _L,
            (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0),
        ),
        MetricDef("switchboard_client_events", "counter", "Client events handled, by type", (*_L, "type")),
        MetricDef(
            "switchboard_errors",
            "counter",
            "Error events sent to clients, by stable code (retryable=true: the server's side)",
            (*_L, "code", "retryable"),
        ),
        # ------------------------------------------------------------ latency
        MetricDef(
            "switchboard_stage_latency_ms",
            "histogram",
            "Time per pipeline stage (guardrail, sentiment, planner, assist, escalation), fallback included",
            ("stage", *_LM),
            (1.0, 2.0, *_MS),
        ),
        MetricDef(
            "switchboard_stage_fallbacks",
            "counter",
            "Stage failures served by the stage's fallback",
            ("stage", *_L),
        ),
        MetricDef(
            "switchboard_transcription_latency_ms",
            "histogram",
            "End of speech to transcript.final (SLO: p95 < 2 s)",
            _LM,
            _SLO,
        ),
        MetricDef(
            "switchboard_asr_real_time_factor",
            "histogram",
            "ASR processing seconds per second of audio, per final transcript",
            _LM,
            (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0),
        ),
        MetricDef("switchboard_asr_audio_seconds", "counter", "Seconds of speech transcribed (finals)", _LM),
        MetricDef(
            "switchboard_assist_latency_ms",
            "histogram",
            "Customer message to the first assist.suggestion (SLO: p95 < 500 ms); model: the reranker",
            (*_LM, "source"),
            _SLO,
        ),
        MetricDef(
            "switchboard_generation_latency_ms",
            "histogram",
            "Customer message to the final generated suggestion, by outcome",
            (*_LM, "source"),
            _SLO,
        ),
        # ------------------------------------------------------------ analysis and outcomes
        MetricDef(
            "switchboard_sentiment_score_avg",
            "gauge",
            "Mean sentiment score (-1..1) of the last 100 customer turns on this replica",
            _LM,
        ),
        MetricDef(
            "switchboard_sentiment_turns", "counter", "Customer turns by sentiment label", (*_LM, "label")
        ),
        MetricDef("switchboard_turns", "counter", "Customer turns analysed", _L),
        MetricDef(
            "switchboard_escalations", "counter", "Escalation alerts raised", (*_L, "queue", "priority")
        ),
        MetricDef(
            "switchboard_queue_depth",
            "gauge",
            "Conversations waiting for a human agent (as last seen by this replica)",
            ("tenant", "queue"),
        ),
        # ------------------------------------------------------------ models and suggestions
        MetricDef(
            "switchboard_model_predictions",
            "counter",
            "Predictions by stage, model and A/B variant",
            ("stage", "model", "variant"),
        ),
        MetricDef(
            "switchboard_shadow_comparisons",
            "counter",
            "Shadow challenger comparisons by stage and agreement",
            ("stage", "champion", "challenger", "agree"),
        ),
        MetricDef(
            "switchboard_suggestions",
            "counter",
            "Final suggestions by source, generator and fallback reason",
            ("source", "model", "fallback"),
        ),
        MetricDef(
            "switchboard_suggestion_feedback",
            "counter",
            "Agent feedback on suggestions by generator, source and action",
            ("model", "source", "action"),
        ),
        MetricDef(
            "switchboard_generation_tokens",
            "counter",
            "Generator tokens by model and kind",
            ("model", "kind"),
        ),
        MetricDef(
            "switchboard_reply_cache_lookups", "counter", "Semantic reply-cache lookups by outcome", ("hit",)
        ),
        # ------------------------------------------------------------ overload and cost
        MetricDef(
            "switchboard_overload",
            "gauge",
            "1 while this ingress replica sheds non-critical stages (pipelines/overload.py)",
            ("deployment",),
        ),
        MetricDef(
            "switchboard_shed", "counter", "Turns whose non-critical stage was skipped under overload", ("stage", *_L)
        ),
        MetricDef(
            "switchboard_sessions_queued",
            "counter",
            "New sessions that had to wait for capacity, by outcome (queued, refused, timed_out)",
            ("outcome",),
        ),
        MetricDef(
            "switchboard_session_queue_depth", "gauge", "New sessions waiting for capacity", ("deployment",)
        ),
        MetricDef(
            "switchboard_session_queue_wait_seconds",
            "histogram",
            "How long a queued new session waited",
            ("deployment",),
            (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0),
        ),
        MetricDef(
            "switchboard_model_cpu_seconds",
            "counter",
            "CPU seconds a model deployment's replica spent on its batches (cost; per session = / sessions ended)",
            ("deployment",),
        ),
        MetricDef(
            "switchboard_model_gpu_seconds",
            "counter",
            "GPU-busy seconds of a model deployment's batches (wall time of batches on a CUDA device)",
            ("deployment",),
        ),
        MetricDef("switchboard_model_items", "counter", "Requests a model deployment served", ("deployment",)),
        MetricDef(
            "switchboard_session_tokens",
            "histogram",
            "Generator tokens (prompt + completion) one session spent, observed when it ends",
            _L,
            (1.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0),
        ),
    )
}

REGISTRY = CollectorRegistry()
disable_created_metrics()  # no `*_created` series: Prometheus does not need them and they double the output


def exposed_names(prefix: str = "") -> set[str]:
    """Every series name this code exports (``prefix="ray_"``: as scraped from Ray's metrics port)."""
    return {name for m in METRICS.values() for name in m.exposed(prefix)}


def _in_ray_worker() -> bool:
    # never import Ray from here: a process that has not imported it is not a worker
    ray = sys.modules.get("ray")
    try:
        return ray is not None and ray.is_initialized()
    except Exception:  # a half-imported or shut-down Ray
        return False


def _value(v: Any) -> str:
    return "none" if v is None or v == "" else str(v)[:80]


class _Metric:
    """One definition, both backends. The Ray metric is created on first use inside a worker."""

    def __init__(self, d: MetricDef) -> None:
        self.d = d
        if d.kind == "counter":
            self.prom: Any = PromCounter(d.name, d.help, d.labels, registry=REGISTRY)
        elif d.kind == "gauge":
            self.prom = PromGauge(d.name, d.help, d.labels, registry=REGISTRY)
        else:
            self.prom = PromHistogram(d.name, d.help, d.labels, registry=REGISTRY, buckets=d.buckets)
        self.ray: Any = None

    def _ray_metric(self) -> Any:
        if self.ray is None and _in_ray_worker():
            try:
                from ray.util import metrics as rm

                if self.d.kind == "counter":
                    self.ray = rm.Counter(self.d.name, description=self.d.help, tag_keys=self.d.labels)
                elif self.d.kind == "gauge":
                    self.ray = rm.Gauge(self.d.name, description=self.d.help, tag_keys=self.d.labels)
                else:
                    self.ray = rm.Histogram(
                        self.d.name,
                        description=self.d.help,
                        boundaries=list(self.d.buckets),
                        tag_keys=self.d.labels,
                    )
            except Exception:  # Ray's metrics unavailable: prometheus_client still has the value
                self.ray = False
        return self.ray or None

    def record(self, value: float, tags: dict[str, str]) -> None:
        ray_metric = self._ray_metric()
        if self.d.kind == "counter":
            self.prom.labels(**tags).inc(value)
            if ray_metric is not None:
                ray_metric.inc(value, tags=tags)
        elif self.d.kind == "gauge":
            self.prom.labels(**tags).set(value)
            if ray_metric is not None:
                ray_metric.set(value, tags=tags)
        else:
            self.prom.labels(**tags).observe(value)
            if ray_metric is not None:
                ray_metric.observe(value, tags=tags)


_lock = threading.Lock()
_metrics = {name: _Metric(d) for name, d in METRICS.items()}
_tally: dict[tuple[str, ...], float] = defaultdict(float)
_gauges: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
_sentiment: dict[tuple[str, ...], deque[float]] = defaultdict(lambda: deque(maxlen=100))


def _record(name: str, value: float = 1.0, **labels: Any) -> None:
    metric = _metrics[name]
    tags = {k: _value(labels.get(k)) for k in metric.d.labels}
    if metric.d.kind == "counter":
        if value <= 0:
            return
        with _lock:
            _tally[(name, *(f"{k}={v}" for k, v in sorted(tags.items())))] += value
    metric.record(float(value), tags)


def _add(name: str, delta: float, **labels: Any) -> None:
    """A gauge kept as a running count in this process (Ray gauges can only be set)."""
    metric = _metrics[name]
    key = (name, tuple(_value(labels.get(k)) for k in metric.d.labels))
    with _lock:
        _gauges[key] = max(0.0, _gauges[key] + delta)
        value = _gauges[key]
    _record(name, value, **labels)


def render() -> bytes:
    """This process's metrics in the Prometheus text format (``GET /metrics`` on the ingress)."""
    return generate_latest(REGISTRY)


def snapshot() -> dict[str, float]:
    """This process's counter totals, keyed ``metric{tag=value,...}`` (tags sorted)."""
    with _lock:
        return {f"{k[0]}{{{','.join(k[1:])}}}": v for k, v in _tally.items()}


# ---------------------------------------------------------------- sessions and client events


def session_started(tenant: str, channel: str) -> None:
    _record("switchboard_sessions_started", tenant=tenant, channel=channel)
    _add("switchboard_concurrent_sessions", 1, tenant=tenant, channel=channel)


def session_ended(tenant: str, channel: str, status: str, duration_s: float) -> None:
    _record("switchboard_sessions_ended", tenant=tenant, channel=channel, status=status)
    _record("switchboard_session_duration_seconds", duration_s, tenant=tenant, channel=channel)
    _add("switchboard_concurrent_sessions", -1, tenant=tenant, channel=channel)


def count_event(kind: str, tenant: str, channel: str) -> None:
    """One client event (``session.start``, ``chat.message``, ``suggestion.feedback``, ``session.end``):
    the denominator of the error rate."""
    _record("switchboard_client_events", tenant=tenant, channel=channel, type=kind)


def count_error(code: str, retryable: bool, tenant: str | None, channel: str | None) -> None:
    """One ``error`` event sent (``channel`` None: before a session existed)."""
    _record("switchboard_errors", tenant=tenant, channel=channel, code=code, retryable=str(retryable).lower())


# ---------------------------------------------------------------- latency


def observe_stage(
    stage: str, ms: float, tenant: str, channel: str, model: str, *, fallback: bool = False
) -> None:
    """A stage's run time (``fallback``: the stage failed and its fallback answered)."""
    _record("switchboard_stage_latency_ms", ms, stage=stage, tenant=tenant, channel=channel, model=model)
    if fallback:
        _record("switchboard_stage_fallbacks", stage=stage, tenant=tenant, channel=channel)


def observe_transcription(ms: float, tenant: str, channel: str, model: str) -> None:
    """End of speech → ``transcript.final`` sent."""
    _record("switchboard_transcription_latency_ms", ms, tenant=tenant, channel=channel, model=model)


def observe_asr(audio_s: float, processing_s: float, tenant: str, channel: str, model: str) -> None:
    """One final transcription: real-time factor = processing seconds / audio seconds."""
    if audio_s <= 0:
        return
    _record(
        "switchboard_asr_real_time_factor",
        processing_s / audio_s,
        tenant=tenant,
        channel=channel,
        model=model,
    )
    _record("switchboard_asr_audio_seconds", audio_s, tenant=tenant, channel=channel, model=model)


def observe_assist(ms: float, tenant: str, channel: str, model: str, source: str) -> None:
    """Customer message → the first ``assist.suggestion`` (the assist SLO)."""
    _record("switchboard_assist_latency_ms", ms, tenant=tenant, channel=channel, model=model, source=source)


def observe_generation(ms: float, tenant: str, channel: str, model: str, source: str) -> None:
    """Customer message → the final version of a generated suggestion (``source`` generated/cache/articles_only)."""
    _record(
        "switchboard_generation_latency_ms", ms, tenant=tenant, channel=channel, model=model, source=source
    )


# ---------------------------------------------------------------- analysis and outcomes


def observe_sentiment(score: float, label: str, tenant: str, channel: str, model: str) -> None:
    """A customer turn's sentiment. Kept as a windowed mean gauge and a count per label: Ray's (OpenTelemetry)
    histograms take only non-negative values, and scores run from -1 to 1."""
    key = (_value(tenant), _value(channel), _value(model))
    with _lock:
        window = _sentiment[key]
        window.append(float(score))
        mean = sum(window) / len(window)
    _record("switchboard_sentiment_score_avg", mean, tenant=tenant, channel=channel, model=model)
    _record("switchboard_sentiment_turns", tenant=tenant, channel=channel, model=model, label=label)


def count_turn(tenant: str, channel: str) -> None:
    """A customer turn analysed (the denominator of the escalation rate)."""
    _record("switchboard_turns", tenant=tenant, channel=channel)


def count_escalation(tenant: str, channel: str, queue: str, priority: str) -> None:
    _record("switchboard_escalations", tenant=tenant, channel=channel, queue=queue, priority=priority)


def set_queue_depth(tenant: str, queue: str, depth: int) -> None:
    _record("switchboard_queue_depth", depth, tenant=tenant, queue=queue)


# ---------------------------------------------------------------- models and suggestions


def count_prediction(stage: str, model: str, variant: str) -> None:
    """One prediction served by ``model`` (name@version or rules) as ``variant``."""
    _record("switchboard_model_predictions", stage=stage, model=model, variant=variant)


def count_shadow(stage: str, champion: str, challenger: str, agree: bool) -> None:
    """One turn scored by the shadow challenger; ``agree``: same label as the champion."""
    _record(
        "switchboard_shadow_comparisons",
        stage=stage,
        champion=champion,
        challenger=challenger,
        agree=str(agree).lower(),
    )


def count_suggestion(source: str, model: str, fallback: str | None) -> None:
    """One final suggestion: ``source`` generated / cache / articles_only, ``fallback`` why (or ``none``)."""
    _record("switchboard_suggestions", source=source, model=model, fallback=fallback or "none")


def count_feedback(model: str, source: str, action: str) -> None:
    """Agent feedback on a suggestion; acceptance rate per model version =
    accepted / all actions of ``switchboard_suggestion_feedback_total{model=...}``."""
    _record("switchboard_suggestion_feedback", model=model, source=source, action=action)


def count_tokens(model: str, kind: str, amount: int) -> None:
    """Generator tokens spent (``kind`` prompt or completion)."""
    _record("switchboard_generation_tokens", amount, model=model, kind=kind)


def count_reply_cache(hit: bool) -> None:
    """A semantic-cache lookup after a failed generation (hit rate = hit=true / all)."""
    _record("switchboard_reply_cache_lookups", hit=str(hit).lower())


# ---------------------------------------------------------------- overload and cost


def set_overload(shedding: bool) -> None:
    _record("switchboard_overload", 1.0 if shedding else 0.0, deployment="ingress")


def count_shed(stage: str, tenant: str, channel: str) -> None:
    _record("switchboard_shed", stage=stage, tenant=tenant, channel=channel)


def count_queued(outcome: str) -> None:
    """A new session that could not start at once: ``queued``, ``refused`` (queue full), ``timed_out``."""
    _record("switchboard_sessions_queued", outcome=outcome)


def set_session_queue(depth: int) -> None:
    _record("switchboard_session_queue_depth", depth, deployment="ingress")


def observe_queue_wait(seconds: float) -> None:
    _record("switchboard_session_queue_wait_seconds", seconds, deployment="ingress")


def observe_model_batch(deployment: str, cpu_s: float, gpu_s: float, items: int) -> None:
    """One batch of a model deployment: what it cost (the cost dashboard divides by sessions)."""
    _record("switchboard_model_cpu_seconds", cpu_s, deployment=deployment)
    _record("switchboard_model_gpu_seconds", gpu_s, deployment=deployment)
    _record("switchboard_model_items", items, deployment=deployment)


def observe_session_tokens(tokens: int, tenant: str, channel: str) -> None:
    _record("switchboard_session_tokens", tokens, tenant=tenant, channel=channel)
