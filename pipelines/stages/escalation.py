"""Escalation: a YAML rule engine over the turn's text, intent, content flags and the session's sentiment
trend, routed to a queue with a priority. Unstaffed specialist queues fall back to the default queue."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ..events import Escalation
from .base import Stage, Turn

if TYPE_CHECKING:
    from ..session import SessionState

__all__ = ["EscalationRules", "EscalationStage", "Rule"]

Priority = Literal["low", "normal", "high", "urgent"]


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


class Queue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    available: bool = True


class EscalationRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_queue: str = "supervisor"
    queues: dict[str, Queue] = Field(default_factory=dict)
    rules: list[Rule]

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

    async def process(self, turn: Turn, state: SessionState) -> list:
        events = []
        for compiled in self._compiled:
            rule = compiled.rule
            if (rule.name in state.fired_rules and not rule.repeat) or not self._matches(
                compiled, turn, state
            ):
                continue
            state.fired_rules.add(rule.name)
            queue, note = self._route(rule.queue)
            reason = rule.reason if note is None else f"{rule.reason} (routed to {queue}: {note})"
            events.append(
                Escalation(
                    utterance_id=turn.utterance_id,
                    reason=reason,
                    queue=queue,
                    priority=rule.priority,
                    rule=rule.name,
                )
            )
        return events
