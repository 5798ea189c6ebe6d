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


async def test_shadow_results_are_recorded_and_counted_never_sent(store, local_models, tmp_path):
    import sqlalchemy

    from pipelines.backends import LocalSentiment
    from pipelines.events import ChatMessage, SessionStart
    from pipelines.metrics import snapshot
    from pipelines.ports import ModelPorts
    from pipelines.review import ReviewQueue, load_or_create_key
    from pipelines.session import Pipeline
    from pipelines.storage import SessionStore, events

    settings = store.model_copy(
        update={"ab_mode": "shadow", "data_dir": tmp_path, "mlflow_tracking_uri": store.resolved_mlflow_uri}
    )
    sentiment = LocalSentiment(SentimentService(settings, refresh=False))
    ports = ModelPorts(
        local_models.guardrail, sentiment, local_models.embedder, local_models.intent, local_models.retriever
    )
    db = SessionStore(settings.sqlalchemy_url)
    await db.start()
    pipeline = Pipeline(
        ports, db, ReviewQueue(db, load_or_create_key(settings.resolved_review_key_file)), settings
    )
    sent: list[dict] = []

    async def emit(event):
        sent.append(event.wire())

    before = sum(v for k, v in snapshot().items() if k.startswith("switchboard_shadow_comparisons"))
    state, _ = await pipeline.start_session("demo", SessionStart(channel="chat", customer_id="c-9"))
    await pipeline.handle(state, ChatMessage(text="I was charged twice, this is ridiculous"), emit)
    await db.flush()
    with db.engine.connect() as conn:
        stored = [r.payload for r in conn.execute(sqlalchemy.select(events).where(events.c.type == "shadow"))]
    await db.close()

    shown = next(e for e in sent if e["type"] == "sentiment")
    assert shown["model"] == "sentiment_classifier@1" and shown["variant"] == "champion"
    assert not any(e["type"] == "shadow" or "shadow" in e for e in sent)
    assert len(stored) == 1 and stored[0]["model"] == "sentiment_classifier@2"
    assert stored[0]["shown"] == {"model": "sentiment_classifier@1", "label": shown["label"]}
    assert stored[0]["agree"] == (stored[0]["label"] == shown["label"])
    after = sum(v for k, v in snapshot().items() if k.startswith("switchboard_shadow_comparisons"))
    assert after == before + 1
