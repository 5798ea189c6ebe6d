"""Post-call quality score: components move the way a supervisor would expect."""

from __future__ import annotations

import pytest

from pipelines.analytics import WEIGHTS, CallSignals, quality_summary, sentiment_trend

pytestmark = pytest.mark.unit


def _call(texts_and_scores, *, escalations=(), feedback=(), channel="chat", talk=None, duration=60.0):
    s = CallSignals()
    for text, score in texts_and_scores:
        s.customer_turn(text, score, None)
    for priority in escalations:
        s.escalation_priorities.append(priority)
    for action in feedback:
        s.feedback[action] += 1
    for speaker, start, end in talk or []:
        s.utterance(speaker, start, end)
    return quality_summary(s, channel=channel, duration_s=duration, escalations=len(escalations))


def test_weights_sum_to_one():
    assert abs(sum(WEIGHTS.values()) - 1.0) < 1e-9


def test_trend():
    assert sentiment_trend([]) == 0.0 and sentiment_trend([0.5]) == 0.0
    assert sentiment_trend([-0.6, -0.2, 0.1, 0.5, 0.6, 0.7]) > 0.9
    assert sentiment_trend([0.5, 0.0, -0.5]) == pytest.approx(-1.0)


def test_resolved_happy_call_beats_escalated_angry_call():
    good = _call(
        [("my bill is wrong", -0.4), ("ok I see", 0.0), ("great, thanks, that fixed it", 0.7)],
        feedback=["accepted", "accepted"],
    )
    bad = _call(
        [("my bill is wrong", -0.4), ("this is useless", -0.7), ("still not fixed, get me a manager", -0.8)],
        escalations=["high"],
        feedback=["rejected"],
    )
    assert good["resolved"] is True and bad["resolved"] is False
    assert good["score"] > 75 > 40 > bad["score"]
    assert good["sentiment_trend"] > 0 > bad["sentiment_trend"]
    assert good["suggestions"]["acceptance_rate"] == 1.0 and bad["suggestions"]["acceptance_rate"] == 0.0
    assert bad["components"]["no_escalation"] == 0.25


def test_voice_talk_and_silence():
    balanced = _call(
        [("hi", 0.0)],
        channel="voice",
        duration=60.0,
        talk=[("S1", 0, 20), ("S2", 21, 45), ("S1", 46, 58)],
    )
    dead_air = _call([("hi", 0.0)], channel="voice", duration=60.0, talk=[("S1", 0, 5), ("S2", 6, 10)])
    assert balanced["talk_ratio"] == pytest.approx(56 / 60, abs=1e-3)
    assert dead_air["silence_ratio"] > 0.8
    assert balanced["components"]["talk"] > 0.9 > 0.5 > dead_air["components"]["talk"]
    assert "talk_ratio" not in _call([("hi", 0.0)])  # chat: not measured
