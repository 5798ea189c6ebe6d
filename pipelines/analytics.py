"""Post-call analytics: a quality score per session, computed at session end from what the pipeline saw.

The score (0-100) is a weighted sum of five components, each in 0...1, so a supervisor can see why a call
scored as it did (every component is returned next to the score):

| component | weight | 1.0 means | 0.0 means |
| --- | --- | --- | --- |
| ``sentiment`` | 0.30 | the customer ended positive, or improved | ended negative and got worse |
| ``resolution`` | 0.25 | the customer confirmed the problem was solved | no sign of resolution, or asked to cancel/complain at the end |
| ``no_escalation`` | 0.15 | no escalation | escalated (urgent: 0) |
| ``suggestions`` | 0.15 | every suggestion the agent rated was accepted (edited counts half) | all rejected; 0.5 when none was rated |
| ``talk`` | 0.15 | voice: speech fills the call with balanced turns; chat: 0.5 (not measured) | long dead air or one side talking throughout |
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CallSignals", "quality_summary", "sentiment_trend", "WEIGHTS"]

WEIGHTS = {"sentiment": 0.30, "resolution": 0.25, "no_escalation": 0.15, "suggestions": 0.15, "talk": 0.15}

_RESOLVED = re.compile(
    r"\b(that (helps|helped|worked|fixed it|answers it|solves it)|(problem|issue) (is )?(solved|resolved|fixed)|"
    r"(it|everything) works( now)?|all set|perfect|great,? thanks?|thanks?,? (that'?s|that is) all|"
    r"that'?s (all|everything) i needed|you('ve| have) been (very |so )?helpful)\b",
    re.IGNORECASE,
)
_UNRESOLVED = re.compile(
    r"\b(still (not|doesn'?t|don'?t|isn'?t|can'?t|waiting)|not (solved|resolved|fixed)|doesn'?t help|"
    r"didn'?t help|no help|useless|cancel)\b",
    re.IGNORECASE,
)
_PRIORITY_PENALTY = {"low": 0.75, "normal": 0.5, "high": 0.25, "urgent": 0.0}


@dataclass
class CallSignals:
    """What the pipeline accumulates during a session for its post-call analytics."""

    sentiments: list[float] = field(default_factory=list)  # customer turns, in order
    last_customer_texts: deque[str] = field(default_factory=lambda: deque(maxlen=2))  # redacted
    # speaker -> seconds of speech
    talk_s: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    feedback: Counter[str] = field(default_factory=Counter)  # accepted / edited / rejected
    suggestions: int = 0
    escalation_priorities: list[str] = field(default_factory=list)
    last_intent: str | None = None

    def customer_turn(self, text: str, sentiment: float | None, intent: str | None) -> None:
        if sentiment is not None:
            self.sentiments.append(sentiment)
        self.last_customer_texts.append(text)
        if intent is not None:
            self.last_intent = intent

    def utterance(self, speaker: str, start: float, end: float) -> None:
        self.talk_s[speaker] += max(0.0, end - start)


def sentiment_trend(values: list[float]) -> float:
    """Mean of the last third minus mean of the first third (0 with fewer than two values)."""
    if len(values) < 2:
        return 0.0
    third = max(1, len(values) // 3)
    return sum(values[-third:]) / third - sum(values[:third]) / third


def _sentiment_component(values: list[float]) -> float:
    if not values:
        return 0.5
    end = sum(values[-2:]) / len(values[-2:])  # where the customer ended up
    level = (end + 1.0) / 2.0
    trend = max(-1.0, min(1.0, sentiment_trend(values)))
    return max(0.0, min(1.0, 0.7 * level + 0.3 * (trend + 1.0) / 2.0))


def _resolution(signals: CallSignals) -> tuple[float, bool]:
    texts = signals.last_customer_texts
    if any(_RESOLVED.search(t) for t in texts) and not _UNRESOLVED.search(texts[-1] if texts else ""):
        return 1.0, True
    if (texts and _UNRESOLVED.search(texts[-1])) or signals.last_intent in ("cancel", "complaint"):
        return 0.0, False
    ended_positive = bool(signals.sentiments) and signals.sentiments[-1] >= 0.05
    return (0.6, False) if ended_positive else (0.3, False)


def _talk(signals: CallSignals, channel: str, duration_s: float) -> tuple[float, dict[str, Any]]:
    if channel != "voice" or duration_s <= 0:
        return 0.5, {}
    speech = sum(signals.talk_s.values())
    talk_ratio = min(1.0, speech / duration_s)
    silence_ratio = 1.0 - talk_ratio
    # dead air above 40 % of the call costs linearly down to 0 at 90 %
    air = 1.0 if silence_ratio <= 0.4 else max(0.0, 1.0 - (silence_ratio - 0.4) / 0.5)
    shares = {s: round(t / speech, 3) for s, t in signals.talk_s.items()} if speech > 0 else {}
    if len(shares) < 2:  # a single speaker heard: 0.5; no speech at all: the dead air already costs
        balance = 0.5 if shares else 1.0
    else:
        # one party holding the floor for over 80 % of the speech is a monologue, not a conversation
        dominant = max(shares.values())
        balance = 1.0 if dominant <= 0.8 else max(0.0, 1.0 - (dominant - 0.8) / 0.2)
    detail = {
        "talk_ratio": round(talk_ratio, 3),
        "silence_ratio": round(silence_ratio, 3),
        "talk_share": shares,
    }
    return 0.6 * air + 0.4 * balance, detail


def quality_summary(
    signals: CallSignals, *, channel: str, duration_s: float, escalations: int
) -> dict[str, Any]:
    """The ``quality`` part of ``session.ended.summary``."""
    sentiment = _sentiment_component(signals.sentiments)
    resolution, resolved = _resolution(signals)
    if escalations:
        no_escalation = min(
            _PRIORITY_PENALTY.get(p, 0.5) for p in signals.escalation_priorities or ["normal"]
        )
    else:
        no_escalation = 1.0
    rated = sum(signals.feedback.values())
    accepted = signals.feedback["accepted"] + 0.5 * signals.feedback["edited"]
    suggestions = accepted / rated if rated else 0.5
    talk, talk_detail = _talk(signals, channel, duration_s)
    components = {
        "sentiment": sentiment,
        "resolution": resolution,
        "no_escalation": no_escalation,
        "suggestions": suggestions,
        "talk": talk,
    }
    score = 100.0 * sum(WEIGHTS[k] * v for k, v in components.items())
    return {
        "score": round(score, 1),
        "components": {k: round(v, 3) for k, v in components.items()},
        "sentiment_trajectory": [round(s, 3) for s in signals.sentiments],
        "sentiment_trend": round(sentiment_trend(signals.sentiments), 3),
        "resolved": resolved,
        "suggestions": {
            "sent": signals.suggestions,
            "accepted": signals.feedback["accepted"],
            "edited": signals.feedback["edited"],
            "rejected": signals.feedback["rejected"],
            "acceptance_rate": round(accepted / rated, 3) if rated else None,
        },
        **talk_detail,
    }
