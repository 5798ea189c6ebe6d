"""Guardrail: PII redaction and content policy. Nothing un-redacted goes further. If detection itself fails
(or misses its budget) the message is blocked, held encrypted for manual review, and never passed on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StageError
from ..events import RedactedEntity, Redaction
from .base import Stage, Turn

if TYPE_CHECKING:
    from ..ports import GuardrailPort
    from ..review import ReviewQueue
    from ..session import SessionState

__all__ = ["GuardrailStage", "PiiBlocked"]


class PiiBlocked(StageError):
    code = "pii_check_failed"


class GuardrailStage(Stage):
    name = "guardrail"

    def __init__(self, guardrail: GuardrailPort, review: ReviewQueue, timeout_s: float = 5.0) -> None:
        super().__init__(timeout_s)
        self.guardrail = guardrail
        self.review = review

    async def process(self, turn: Turn, state: SessionState) -> list:
        if turn.raw_text is None:
            raise RuntimeError("guardrail called twice on one turn")
        result = await self.guardrail.redact(turn.raw_text)
        turn.text, turn.flags, turn.raw_text = result.text, tuple(result.flags), None
        if not result.entities and not result.flags:
            return []
        return [
            Redaction(
                utterance_id=turn.utterance_id,
                entities=[RedactedEntity(type=e.type, start=e.start, end=e.end) for e in result.entities],
                flags=list(result.flags),
            )
        ]

    async def fallback(self, turn: Turn, state: SessionState, error: BaseException) -> list:
        raw, turn.raw_text = turn.raw_text, None
        if raw is not None:
            await self.review.hold(
                state, turn.utterance_id, raw, reason=f"pii_detection:{type(error).__name__}"
            )
        raise PiiBlocked(
            "PII detection failed, so this message was not processed; it is held (encrypted) for manual review. "
            "You can resend it; nothing already accepted was lost.",
            utterance_id=turn.utterance_id,
        ) from error
