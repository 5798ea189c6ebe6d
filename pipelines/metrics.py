"""Model-use counters: which model and variant served each prediction, and how often a shadow challenger
agreed with the champion.

Inside a Ray worker the counters are Ray metrics (exported on Ray's Prometheus port with the rest of the
cluster's metrics); elsewhere they are ``prometheus_client`` counters in the default registry. ``snapshot()``
returns the process's own counts either way.
"""

from __future__ import annotations

import threading
from collections import Counter as _Tally
from typing import Any

__all__ = [
    "count_prediction",
    "count_shadow",
    "count_suggestion",
    "count_feedback",
    "count_tokens",
    "count_reply_cache",
    "snapshot",
]

_PREDICTIONS = "switchboard_model_predictions"
_SHADOW = "switchboard_shadow_comparisons"
_lock = threading.Lock()
_tally: _Tally[tuple[str, ...]] = _Tally()
_backends: dict[str, Any] = {}


def _counter(name: str, description: str, keys: tuple[str, ...]) -> Any:
    if name in _backends:
        return _backends[name]
    counter: Any = None
    try:
        import ray

        if ray.is_initialized():
            from ray.util.metrics import Counter

            counter = ("ray", Counter(name, description=description, tag_keys=keys))
    except Exception:  # Ray missing or not in a worker: fall through to prometheus_client
        counter = None
    if counter is None:
        try:
            from prometheus_client import Counter as PromCounter

            counter = ("prom", PromCounter(name, description, list(keys)))
        except Exception:  # already registered in this process (tests) or unavailable: tally only
            counter = ("none", None)
    _backends[name] = counter
    return counter


def _inc(name: str, description: str, tags: dict[str, str], amount: int = 1) -> None:
    with _lock:
        _tally[(name, *(f"{k}={v}" for k, v in sorted(tags.items())))] += amount
        kind, counter = _counter(name, description, tuple(sorted(tags)))
    if kind == "ray":
        counter.inc(amount, tags=tags)
    elif kind == "prom":
        counter.labels(**tags).inc(amount)


def count_prediction(stage: str, model: str, variant: str) -> None:
    """One prediction served by ``model`` (name@version or rules) as ``variant``."""
    _inc(
        _PREDICTIONS,
        "Predictions by stage, model and A/B variant",
        {"stage": stage, "model": model, "variant": variant},
    )


def count_shadow(stage: str, champion: str, challenger: str, agree: bool) -> None:
    """One turn scored by the shadow challenger; ``agree``: same label as the champion."""
    _inc(
        _SHADOW,
        "Shadow challenger comparisons by stage and agreement",
        {"stage": stage, "champion": champion, "challenger": challenger, "agree": str(agree).lower()},
    )


def count_suggestion(source: str, model: str, fallback: str | None) -> None:
    """One final suggestion: ``source`` generated / cache / articles_only, ``fallback`` why (or ``none``)."""
    _inc(
        "switchboard_suggestions",
        "Final suggestions by source, generator and fallback reason",
        {"source": source, "model": model, "fallback": fallback or "none"},
    )


def count_feedback(model: str, source: str, action: str) -> None:
    """Agent feedback on a suggestion; acceptance rate per model version =
    accepted / all actions of ``switchboard_suggestion_feedback{model=...}``."""
    _inc(
        "switchboard_suggestion_feedback",
        "Agent feedback on suggestions by generator, source and action",
        {"model": model, "source": source, "action": action},
    )


def count_tokens(model: str, kind: str, amount: int) -> None:
    """Generator tokens spent (``kind`` prompt or completion)."""
    if amount > 0:
        _inc(
            "switchboard_generation_tokens",
            "Generator tokens by model and kind",
            {"model": model, "kind": kind},
            amount,
        )


def count_reply_cache(hit: bool) -> None:
    """A semantic-cache lookup after a failed generation (hit rate = hit=true / all)."""
    _inc(
        "switchboard_reply_cache_lookups",
        "Semantic reply-cache lookups by outcome",
        {"hit": str(hit).lower()},
    )


def snapshot() -> dict[str, int]:
    """This process's counts, keyed ``metric{tag=value,...}``."""
    with _lock:
        return {f"{k[0]}{{{','.join(k[1:])}}}": v for k, v in _tally.items()}
