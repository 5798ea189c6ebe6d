"""The stage machinery: a stage overrides ``process``; the base owns timing, the timeout budget, metrics and
the fallback. Stages share one ``Turn`` (the utterance being analysed) and return the events they produce."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import metrics, tracing

if TYPE_CHECKING:
    import numpy as np

    from ..events import _Event
    from ..session import SessionState

__all__ = ["Turn", "Stage", "StageStats", "served_by"]

log = logging.getLogger("switchboard.pipeline")


@dataclass
class Turn:
    """One utterance flowing through the pipeline. ``text`` is redacted once the guardrail has run; the raw
    text is dropped from the turn at that moment so no later stage can see it."""

    utterance_id: str
    speaker: str
    received_at: float  # time.perf_counter()
    raw_text: str | None
    text: str | None = None
    message_id: str | None = None
    vector: np.ndarray | None = None
    sentiment: Any = None  # models.text.sentiment.SentimentScore
    intent: str | None = None
    intent_confidence: float = 0.0
    flags: tuple[str, ...] = ()
    hits: list[Any] = field(default_factory=list)  # the articles assist chose (models.retrieval.index.Hit)
    predictions: dict[str, Any] = field(default_factory=dict)  # stage -> result with .model/.variant/.shadow
    timings_ms: dict[str, float] = field(default_factory=dict)
    crm_line: str | None = None  # "speaker: redacted text" for the CRM case (only when a CRM is configured)

    @property
    def redacted(self) -> str:
        if self.text is None:
            raise RuntimeError("the guardrail has not run on this turn")
        return self.text


@dataclass
class StageStats:
    calls: int = 0
    fallbacks: int = 0
    total_ms: float = 0.0


class Stage:
    """Subclasses set ``name`` and implement ``process``; ``fallback`` defaults to re-raising."""

    name = "stage"

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.stats = StageStats()

    async def process(self, turn: Turn, state: SessionState) -> list[_Event]:
        raise NotImplementedError

    async def fallback(self, turn: Turn, state: SessionState, error: BaseException) -> list[_Event]:
        raise error

    async def run(self, turn: Turn, state: SessionState) -> list[_Event]:
        start = time.perf_counter()
        self.stats.calls += 1
        fell_back = False
        with tracing.span(f"stage {self.name}", stage=self.name, utterance_id=turn.utterance_id) as span:
            try:
                return await asyncio.wait_for(self.process(turn, state), self.timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure goes through the stage's declared fallback
                self.stats.fallbacks += 1
                fell_back = True
                span.set_attribute("switchboard.fallback", type(exc).__name__)
                log.warning(
                    "stage %s failed (%s), using fallback",
                    self.name,
                    type(exc).__name__,
                    extra={"session_id": state.session_id, "utterance_id": turn.utterance_id},
                )
                return await self.fallback(turn, state, exc)
            finally:
                elapsed = (time.perf_counter() - start) * 1000.0
                turn.timings_ms[self.name] = round(elapsed, 3)
                self.stats.total_ms += elapsed
                model = served_by(turn.predictions.get(self.name))
                span.set_attribute("switchboard.model", model)
                metrics.observe_stage(
                    self.name, elapsed, state.tenant, state.channel, model, fallback=fell_back
                )


def served_by(prediction: Any) -> str:
    """The model label of a stage's result: name@version (or ``rules``), the reranker for assist, else ``none``."""
    if prediction is None:
        return "none"
    return getattr(prediction, "model", None) or getattr(prediction, "reranker", None) or "faiss"
