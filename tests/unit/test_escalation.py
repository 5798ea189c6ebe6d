from __future__ import annotations

import time
from pathlib import Path

import pytest

from models.text.sentiment import SentimentScore
from pipelines.config import Settings
from pipelines.session import SessionState
from pipelines.stages.base import Turn
from pipelines.stages.escalation import EscalationRules, EscalationStage

pytestmark = pytest.mark.unit


def run_turn(stage, state, text, *, intent=None, flags=(), label="neutral"):
    turn = Turn(
        utterance_id="u", speaker="customer", received_at=time.perf_counter(), raw_text=None, text=text
    )
    turn.intent, turn.flags = intent, tuple(flags)
    turn.sentiment = SentimentScore(label=label, score=-0.5 if label == "negative" else 0.0, model="rules")
    state.negative_streak = state.negative_streak + 1 if label == "negative" else 0
    import asyncio

    return [e.wire() for e in asyncio.run(stage.run(turn, state))]


@pytest.fixture
def stage():
    return EscalationStage(EscalationRules.load(Settings().escalation_rules))


@pytest.fixture
def state():
    return SessionState("s", "demo", "c", "chat")


def test_keywords_fire_once_per_session(stage, state):
    first = run_turn(stage, state, "Get me your SUPERVISOR")
    assert [(e["rule"], e["queue"], e["priority"]) for e in first] == [
        ("supervisor_request", "supervisor", "high")
    ]
    assert run_turn(stage, state, "supervisor, now!") == []


def test_keywords_match_whole_words_only(stage, state):
    assert run_turn(stage, state, "I'm pursuing a career in management") == []  # not "sue", not "manager"


def test_emergency_goes_to_clinical_triage_urgently(stage, state):
    events = run_turn(stage, state, "my father has chest pain right now")
    assert events[0]["queue"] == "clinical_triage" and events[0]["priority"] == "urgent"


def test_self_harm_flag_escalates(stage, state):
    events = run_turn(stage, state, "[redacted text]", flags=["self_harm"])
    assert events[0]["rule"] == "safety_emergency"


def test_negative_streak_needs_consecutive_turns(stage, state):
    assert run_turn(stage, state, "this is bad", label="negative") == []
    assert run_turn(stage, state, "ok", label="neutral") == []
    assert run_turn(stage, state, "bad again", label="negative") == []
    assert [e["rule"] for e in run_turn(stage, state, "still bad", label="negative")] == [
        "sustained_negative_sentiment"
    ]


def test_intent_rule_and_unstaffed_queue_falls_back_to_supervisor(stage, state):
    assert run_turn(stage, state, "I'd like to stop", intent="cancel")[0]["queue"] == "retention"
    legal = run_turn(stage, state, "my attorney will call you")[0]
    assert legal["queue"] == "supervisor" and "legal_liaison has no one available" in legal["reason"]


def test_several_rules_can_fire_on_one_turn(stage, state):
    rules = [e["rule"] for e in run_turn(stage, state, "I'll sue you, get me a manager")]
    assert rules == ["legal_threat", "supervisor_request"]


def test_rule_file_errors_are_clear(tmp_path: Path):
    bad = tmp_path / "rules.yaml"
    bad.write_text(
        "rules:\n  - name: x\n    when: {keywords: [a]}\n    queue: q\n    priority: sometime\n    reason: r\n"
    )
    with pytest.raises(ValueError, match="priority"):
        EscalationRules.load(bad)
    with pytest.raises(FileNotFoundError, match="SWITCHBOARD_ESCALATION_RULES"):
        EscalationRules.load(tmp_path / "missing.yaml")


class _Features:
    """The shape pipelines.features.CustomerFeatures has (the stage reads only these fields)."""

    def __init__(self, clv=100.0, history=0, hist_sentiment=0.0, source="online"):
        self.customer_lifetime_value = clv
        self.escalation_history_count = history
        self.historical_sentiment_avg = hist_sentiment
        self.source = source


def run_with_features(stage, state, text, features, *, label="neutral", sentiments=()):
    import asyncio

    state.signals.sentiments = list(sentiments)

    async def go():
        async def read():
            return features

        state.features = asyncio.create_task(read())
        turn = Turn(
            utterance_id="u", speaker="customer", received_at=time.perf_counter(), raw_text=None, text=text
        )
        turn.sentiment = SentimentScore(
            label=label, score=-0.5 if label == "negative" else 0.0, model="rules"
        )
        state.negative_streak = state.negative_streak + 1 if label == "negative" else 0
        return [e.wire() for e in await stage.run(turn, state)]

    return asyncio.run(go())


def test_high_value_customer_with_falling_sentiment_gets_higher_priority(stage):
    falling = dict(label="negative", sentiments=[0.2, -0.1, -0.6])
    low = run_with_features(
        stage, SessionState("a", "demo", "c", "chat"), "get me a manager", _Features(), **falling
    )
    high = run_with_features(
        stage, SessionState("b", "demo", "c", "chat"), "get me a manager", _Features(clv=8000), **falling
    )
    assert low[0]["priority"] == "high" and "factors" not in low[0]
    assert high[0]["priority"] == "urgent" and high[0]["factors"] == ["high_value_falling_sentiment"]
    assert "sentiment is falling" in high[0]["reason"]
    steady = run_with_features(
        stage,
        SessionState("c", "demo", "c", "chat"),
        "get me a manager",
        _Features(clv=8000),
        sentiments=[0.3, 0.4],
    )
    assert steady[0]["priority"] == "high"  # valuable but not unhappy: no bump


def test_repeat_escalator_and_vip_routing(stage):
    events = run_with_features(
        stage,
        SessionState("a", "demo", "c", "chat"),
        "I want to cancel my plan",
        _Features(clv=15000, history=4),
    )
    cancel = next(e for e in events if e["rule"] == "cancellation_risk")
    assert cancel["priority"] == "high" and cancel["queue"] == "vip_care"
    assert cancel["factors"] == ["repeat_escalator", "vip_routing"]
    emergency = run_with_features(
        stage, SessionState("b", "demo", "c", "chat"), "chest pain", _Features(clv=15000, history=4)
    )
    assert emergency[0]["queue"] == "clinical_triage" and emergency[0]["priority"] == "urgent"


def test_default_features_change_nothing(stage):
    for source in ("default", "timeout", "error"):
        events = run_with_features(
            stage,
            SessionState("a", "demo", "c", "chat"),
            "get me a manager",
            _Features(clv=99999, history=9, source=source),
            label="negative",
            sentiments=[0.5, -0.9],
        )
        assert events[0]["priority"] == "high" and "factors" not in events[0]
