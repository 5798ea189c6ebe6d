"""Planner: intent and entities. Embedding similarity plus keyword cues; when the model is unavailable,
keyword routing alone. Confidence below the threshold hands the turn to the human agent (`human_agent`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.text.intent import IntentPrediction, extract_entities, rule_intent

from ..events import Entity, Intent
from .base import Stage, Turn

if TYPE_CHECKING:
    from ..ports import EmbedderPort, IntentPort
    from ..session import SessionState

__all__ = ["PlannerStage"]


class PlannerStage(Stage):
    name = "planner"

    def __init__(
        self, embedder: EmbedderPort, intent: IntentPort, threshold: float = 0.6, timeout_s: float = 5.0
    ) -> None:
        super().__init__(timeout_s)
        self.embedder = embedder
        self.intent = intent
        self.threshold = threshold

    def _event(self, turn: Turn, prediction: IntentPrediction) -> list:
        handed_off = prediction.confidence < self.threshold
        turn.intent = "human_agent" if handed_off else prediction.intent
        turn.intent_confidence = prediction.confidence
        turn.predictions["planner"] = prediction
        return [
            Intent(
                utterance_id=turn.utterance_id,
                intent=turn.intent,
                confidence=prediction.confidence,
                entities=[Entity(type=t, value=v) for t, v in extract_entities(turn.redacted)],
                predicted=prediction.intent if handed_off and prediction.intent != "human_agent" else None,
                model=prediction.model,
                variant=prediction.variant or "rules",
            )
        ]

    async def process(self, turn: Turn, state: SessionState) -> list:
        if turn.vector is None:
            turn.vector = await self.embedder.embed(turn.redacted)
        return self._event(turn, await self.intent.predict(turn.redacted, turn.vector, state.variant))

    async def fallback(self, turn: Turn, state: SessionState, error: BaseException) -> list:
        return self._event(turn, rule_intent(turn.redacted))
