"""The text-model services with real small trained models in a real MLflow store: A/B arms per request,
shadow scoring, and the per-batch rules fallback when a model raises."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import Settings
from pipelines.model_services import IntentService, SentimentService
from pipelines.training.common import register_trained

pytestmark = pytest.mark.unit

TEXTS = ["this is ridiculous, I was charged twice", "thanks so much, that fixed it", "what are your hours"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_sentiment, small_intent, index_dir):
    settings = Settings(data_dir=tmp_path_factory.mktemp("services"), index_dir=index_dir)
    for model in (small_sentiment, small_intent):
        # explicit aliases: a small run may not pass the promotion gate that alias="auto" applies
        register_trained(model, settings, alias="champion")  # v1
        register_trained(model, settings, alias="challenger")  # v2
    return settings


def test_ab_arms_are_served_per_request(store):
    service = SentimentService(store.model_copy(update={"ab_challenger_share": 0.5}), refresh=False)
    scores = service.score_batch(TEXTS, ["champion", "challenger", "champion"])
    assert [s.model for s in scores] == [
        "sentiment_classifier@1",
        "sentiment_classifier@2",
        "sentiment_classifier@1",
    ]
    assert [s.variant for s in scores] == ["champion", "challenger", "champion"]
    assert all(s.shadow is None for s in scores)
    assert {s.label for s in scores} <= {"negative", "neutral", "positive"}


def test_shadow_mode_scores_with_the_challenger_without_showing_it(store):
    service = IntentService(store.model_copy(update={"ab_mode": "shadow"}), refresh=False)
    vectors = np.zeros((len(TEXTS), 384), dtype=np.float32)
    preds = service.predict_batch(TEXTS, vectors, ["champion"] * len(TEXTS))
    assert {p.model for p in preds} == {"intent_classifier@1"}
    assert {p.shadow.model for p in preds} == {"intent_classifier@2"}
    assert all(p.shadow.variant == "challenger" for p in preds)


def test_a_failing_model_falls_back_to_rules_for_that_batch(store, monkeypatch):
    service = SentimentService(store, refresh=False)
    model = service.served.get("champion").model

    def broken(texts):
        raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(model, "score_batch", broken)
    scores = service.score_batch(TEXTS)
    assert {(s.model, s.variant) for s in scores} == {("rules:fallback", "rules")}
    assert scores[0].label == "negative" and scores[1].label == "positive"
    monkeypatch.undo()
    assert {s.model for s in service.score_batch(TEXTS)} == {"sentiment_classifier@1"}
