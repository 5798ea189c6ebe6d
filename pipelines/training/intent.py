"""Train ``intent_classifier``: all-MiniLM-L6-v2 fine-tuned on the labelled examples of ``intents.yaml``.

Evaluated on ``intents_eval.yaml`` (held-out utterances written separately, never trained on) next to the
serving baseline, ``SimilarityIntentModel`` (nearest labelled examples by MiniLM embedding + keyword cues),
on the same utterances. The same file's entity annotations measure ``extract_entities``: micro precision,
recall and F1 over (type, value) pairs (values compared case-insensitively), and per entity type.

There is no separate validation set: with ~32 examples per intent every example goes to training and the
loop runs a fixed number of epochs (chosen once, not tuned on the evaluation set).

    python -m pipelines.training.intent                    # full run (~1-2 min on 2 cores), registers
    python -m pipelines.training.intent --small --no-register --out /tmp/intent
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..config import Settings
from .common import TrainedModel, read_manifest, write_manifest
from .data import INTENTS_EVAL_PATH, IntentEvalExample, load_intent_eval, load_intent_train
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

__all__ = ["NAME", "FULL", "SMALL", "train_intent", "entity_metrics", "main"]

NAME = "intent_classifier"

FULL = FinetuneConfig(epochs=12, learning_rate=1e-4, batch_size=16, max_length=64, warmup_ratio=0.1)
SMALL = FinetuneConfig(epochs=2, learning_rate=1e-4, batch_size=16, max_length=64, warmup_ratio=0.1)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def entity_metrics(examples: list[IntentEvalExample]) -> dict[str, Any]:
    """``extract_entities`` against the annotations: micro P/R/F1, per type, and the misses."""
    from models.text.intent import extract_entities

    counts: dict[str, Counter[str]] = {}
    errors = []
    for example in examples:
        gold = Counter((t, v.casefold()) for t, v in example.entities)
        found = Counter((t, v.casefold()) for t, v in extract_entities(example.text))
        for kind in {t for t, _ in gold} | {t for t, _ in found}:
            c = counts.setdefault(kind, Counter())
            g = Counter({k: n for k, n in gold.items() if k[0] == kind})
            f = Counter({k: n for k, n in found.items() if k[0] == kind})
            c["tp"] += sum((g & f).values())
            c["fp"] += sum((f - g).values())
            c["fn"] += sum((g - f).values())
        if gold != found:
            errors.append(
                {"text": example.text, "missed": sorted(gold - found), "spurious": sorted(found - gold)}
            )
    total = Counter[str]()
    for c in counts.values():
        total.update(c)
    return {
        **_prf(total["tp"], total["fp"], total["fn"]),
        "per_type": {kind: _prf(c["tp"], c["fp"], c["fn"]) for kind, c in sorted(counts.items())},
        "errors": errors,
    }


def train_intent(
    settings: Settings,
    out_dir: Path,
    *,
    small: bool = False,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
) -> TrainedModel:
    """Fine-tune on intents.yaml, evaluate model, similarity baseline and entity extraction on
    intents_eval.yaml, write the model folder."""
    from models.retrieval.embedder import MiniLMEmbedder
    from models.text.classifier import SequenceClassifier
    from models.text.intent import SimilarityIntentModel, TrainedIntentModel

    config = replace(SMALL if small else FULL, seed=seed, threads=threads)
    train = load_intent_train(settings.intents_path)
    evaluation = load_intent_eval(INTENTS_EVAL_PATH)
    labels = list(dict.fromkeys(e.label for e in train))
    unknown = {e.intent for e in evaluation} - set(labels)
    if unknown:
        raise ValueError(f"{INTENTS_EVAL_PATH} has intents {sorted(unknown)} that intents.yaml does not")
    train_texts = {e.text.casefold().strip() for e in train}
    overlap = [e.text for e in evaluation if e.text.casefold().strip() in train_texts]
    if overlap:
        raise ValueError(f"evaluation utterances also in intents.yaml: {overlap}")

    result = finetune_classifier(
        [e.text for e in train],
        [e.label for e in train],
        labels=labels,
        out_dir=Path(out_dir),
        task="intent",
        config=config,
        progress=progress,
    )

    texts = [e.text for e in evaluation]
    gold = [e.intent for e in evaluation]
    with torch_threads(result.threads):  # evaluate with the training process's thread count
        started = time.perf_counter()
        model = TrainedIntentModel(SequenceClassifier(result.folder, name=NAME), name=NAME)
        model_pred = [p.intent for p in model.predict_batch(texts, None)]
        model_seconds = time.perf_counter() - started

        embedder = MiniLMEmbedder(settings.embedding_model_path)
        baseline = SimilarityIntentModel(
            embedder.embed_batch([e.text for e in train]), [e.label for e in train]
        )
        baseline_pred = [p.intent for p in baseline.predict_batch(texts, embedder.embed_batch(texts))]

    model_eval = classification_metrics(gold, model_pred, labels)
    baseline_eval = classification_metrics(gold, baseline_pred, labels)
    entities = entity_metrics(evaluation)
    misses = {
        name: [
            {"text": t, "gold": g, "predicted": p}
            for t, g, p in zip(texts, gold, predicted, strict=True)
            if g != p
        ]
        for name, predicted in (("model", model_pred), ("similarity", baseline_pred))
    }
    metrics = {
        "eval_accuracy": model_eval["accuracy"],
        "eval_macro_f1": model_eval["macro_f1"],
        "similarity_eval_accuracy": baseline_eval["accuracy"],
        "similarity_eval_macro_f1": baseline_eval["macro_f1"],
        **gain_points(model_eval, baseline_eval),
        "entity_precision": entities["precision"],
        "entity_recall": entities["recall"],
        "entity_f1": entities["f1"],
        "train_seconds": result.train_seconds,
        "eval_utterances_per_second": round(len(texts) / max(model_seconds, 1e-6), 1),
        "n_train": len(train),
        "n_eval": len(evaluation),
    }
    manifest = read_manifest(result.folder)
    manifest["metrics"] = {
        "eval": {k: metrics[k] for k in ("eval_accuracy", "eval_macro_f1", "similarity_eval_accuracy")}
    }
    write_manifest(result.folder, **manifest)
    params = {
        **{f"finetune_{k}": v for k, v in asdict(config).items()},
        "base_model": manifest["base_model"],
        "small": small,
        "seed": seed,
        "train_data": str(settings.intents_path),
        "eval_data": str(INTENTS_EVAL_PATH),
        "threads": result.threads,
    }
    reports = {
        "evaluation.json": {
            "eval": {"model": model_eval, "similarity": baseline_eval},
            "entities": entities,
            "misses": misses,
            "history": result.history,
        }
    }
    beats = metrics["eval_accuracy"] >= metrics["similarity_eval_accuracy"]
    return TrainedModel(NAME, result.folder, params, metrics, reports, beats_baseline=beats)


def evaluation_table(trained: TrainedModel) -> str:
    report = trained.reports["evaluation.json"]
    m = trained.metrics
    entity_rows = [
        f"  {kind:<11} P {v['precision']:.3f}  R {v['recall']:.3f}  F1 {v['f1']:.3f}"
        for kind, v in report["entities"]["per_type"].items()
    ]
    return "\n".join(
        [
            f"intent, held-out intents_eval.yaml ({m['n_eval']} utterances; trained on {m['n_train']}, "
            f"{m['train_seconds']:.0f} s):",
            format_table(
                {NAME: report["eval"]["model"], "similarity (serving rules)": report["eval"]["similarity"]}
            ),
            format_gain(m, "similarity"),
            f"entity extraction: P {m['entity_precision']:.3f}  R {m['entity_recall']:.3f}  F1 {m['entity_f1']:.3f}",
            *entity_rows,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(
        argv,
        prog="python -m pipelines.training.intent",
        description="Fine-tune the intent classifier, compare it with the similarity model, register it.",
        name=NAME,
        train=train_intent,
        table=evaluation_table,
    )


if __name__ == "__main__":
    raise SystemExit(main())
