"""Escalation: a YAML rule engine over the turn's text, intent, content flags and the session's sentiment
trend, routed to a queue with a priority. Unstaffed specialist queues fall back to the default queue."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ..analytics import sentiment_trend
from ..events import Escalation
from .base import Stage, Turn

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = ["EscalationRules", "EscalationStage", "Rule"]

Priority = Literal["low", "normal", "high", "urgent"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)  # lowest first


class Conditions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keywords: list[str] = Field(default_factory=list)
    intents: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    negative_streak: int | None = Field(default=None, ge=1)


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    when: Conditions
    queue: str
    priority: Priority = "normal"
    reason: str
    repeat: bool = False


class FeatureConditions(BaseModel):
    """Conditions on the customer's online features (Feast) and this session's sentiment; all must hold."""

    model_config = ConfigDict(extra="forbid")

    min_lifetime_value: float | None = None
    min_escalation_history: int | None = Field(default=None, ge=0)
    max_historical_sentiment: float | None = Field(default=None, ge=-1.0, le=1.0)
    # this session's customer sentiment trend is below zero, or its last turn was negative
    sentiment_falling: bool = False


class FeatureRule(BaseModel):
    """Raises the priority (``bump`` levels) and/or reroutes (``queue``) an escalation that fired."""

    model_config = ConfigDict(extra="forbid")

    name: str
    when: FeatureConditions
    bump: int = Field(default=0, ge=0, le=3)
    queue: str | None = None
    reason: str


class Queue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    available: bool = True


class EscalationRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_queue: str = "supervisor"
    queues: dict[str, Queue] = Field(default_factory=dict)
    rules: list[Rule]
    feature_rules: list[FeatureRule] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> EscalationRules:
        try:
            return cls.model_validate(yaml.safe_load(Path(path).read_text()))
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"escalation rules file {path} not found (SWITCHBOARD_ESCALATION_RULES)"
            ) from exc


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: Rule
    keywords: re.Pattern[str] | None


def _keyword_pattern(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


class EscalationStage(Stage):
    name = "escalation"

    def __init__(self, rules: EscalationRules, timeout_s: float = 5.0) -> None:
        super().__init__(timeout_s)
        self.rules = rules
        self._compiled = [_CompiledRule(r, _keyword_pattern(r.when.keywords)) for r in rules.rules]

    def _matches(self, compiled: _CompiledRule, turn: Turn, state: SessionState) -> bool:
        when = compiled.rule.when
        if compiled.keywords is not None and compiled.keywords.search(turn.redacted):
            return True
        if turn.intent is not None and turn.intent in when.intents:
            return True
        if set(turn.flags) & set(when.flags):
            return True
        return when.negative_streak is not None and state.negative_streak >= when.negative_streak

    def _route(self, queue: str) -> tuple[str, str | None]:
        spec = self.rules.queues.get(queue)
        if queue == self.rules.default_queue or spec is None or spec.available:
            return queue, None
        return self.rules.default_queue, f"{queue} has no one available"

    def _feature_rules(self, features: Any, state: SessionState) -> list[FeatureRule]:
        if getattr(features, "source", None) != "online":
            return []  # defaults say nothing about this customer
        trend = sentiment_trend(state.signals.sentiments)
        matched = []
        for rule in self.rules.feature_rules:
            w = rule.when
            if w.min_lifetime_value is not None and features.customer_lifetime_value < w.min_lifetime_value:
                continue
            if (
                w.min_escalation_history is not None
                and features.escalation_history_count < w.min_escalation_history
            ):
                continue
            if (
                w.max_historical_sentiment is not None
                and features.historical_sentiment_avg > w.max_historical_sentiment
            ):
                continue
            if w.sentiment_falling and not (trend < 0 or state.negative_streak >= 1):
                continue
            matched.append(rule)
        return matched

    async def process(self, turn: Turn, state: SessionState) -> list:
        fired: list[Rule] = []
        for compiled in self._compiled:
            rule = compiled.rule
            if (rule.name in state.fired_rules and not rule.repeat) or not self._matches(
                compiled, turn, state
            ):
                continue
            state.fired_rules.add(rule.name)
            fired.append(rule)
        if not fired:
            return []
        # only sessions that escalate wait for the features (fetched since session start, with a timeout)
        features = await state.customer_features()
        boosts = self._feature_rules(features, state)
        bump = sum(b.bump for b in boosts)
        reroute = next((b.queue for b in reversed(boosts) if b.queue), None)  # the last rerouting rule wins
        boost_reasons = "".join(f"; {b.reason}" for b in boosts)
        events = []
        for rule in fired:
            priority = PRIORITIES[min(PRIORITIES.index(rule.priority) + bump, len(PRIORITIES) - 1)]
            # emergencies keep their specialist queue
            target = reroute if reroute is not None and rule.priority != "urgent" else rule.queue
            queue, note = self._route(target)
            reason = rule.reason if note is None else f"{rule.reason} (routed to {queue}: {note})"
            events.append(
                Escalation(
                    utterance_id=turn.utterance_id,
                    reason=reason + boost_reasons,
                    queue=queue,
                    priority=priority,
                    rule=rule.name,
                    factors=[b.name for b in boosts] or None,
                )
            )
        return events
