"""Sentiment: the configured backend (rules now, the fine-tuned model later); on failure the in-process
rule scorer; if even that fails, neutral."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from models.text.sentiment import LexiconSentiment, SentimentScore

from ..events import Sentiment
from .base import Stage, Turn

if TYPE_CHECKING:
    from ..ports import SentimentPort
    from ..session import SessionState

__all__ = ["SentimentStage"]

log = logging.getLogger("switchboard.pipeline")


class SentimentStage(Stage):
    name = "sentiment"

    def __init__(self, backend: SentimentPort, timeout_s: float = 5.0) -> None:
        super().__init__(timeout_s)
        self.backend = backend
        self._rules: LexiconSentiment | None = None

    def _event(self, turn: Turn, score: SentimentScore) -> list:
        turn.sentiment = score
        turn.predictions["sentiment"] = score
        return [
            Sentiment(
                utterance_id=turn.utterance_id,
                label=score.label,
                score=score.score,
                emotions=score.emotions,
                model=score.model,
                variant=score.variant,
            )
        ]

    async def process(self, turn: Turn, state: SessionState) -> list:
        return self._event(turn, await self.backend.score(turn.redacted, state.variant))

    async def fallback(self, turn: Turn, state: SessionState, error: BaseException) -> list:
        try:
            if self._rules is None:
                self._rules = LexiconSentiment()
            score = self._rules.score(turn.redacted)
            score = SentimentScore(
                label=score.label, score=score.score, model="rules:fallback", variant="rules"
            )
        except Exception as exc:  # the last resort is neutral, never a missing event
            log.warning("rule sentiment failed too (%s); neutral", type(exc).__name__)
            score = SentimentScore(label="neutral", score=0.0, model="neutral:fallback", variant="rules")
        return self._event(turn, score)
