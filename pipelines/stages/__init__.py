"""One stage per agent of DESIGN.md; each overrides ``process`` and declares its ``fallback``."""

from .assist import AssistStage
from .base import Stage, Turn
from .escalation import EscalationRules, EscalationStage
from .guardrail import GuardrailStage, PiiBlocked
from .planner import PlannerStage
from .sentiment import SentimentStage

__all__ = [
    "Stage",
    "Turn",
    "GuardrailStage",
    "PiiBlocked",
    "SentimentStage",
    "PlannerStage",
    "AssistStage",
    "EscalationRules",
    "EscalationStage",
]
