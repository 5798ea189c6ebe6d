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
