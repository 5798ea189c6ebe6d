"""The one fine-tuning loop for sequence classification, and the evaluation helpers the trainers share.

``finetune_classifier`` puts a fresh classification head on a BERT-style encoder (the packaged
all-MiniLM-L6-v2 by default) and trains all weights with AdamW and a linear warm-up/decay schedule, batches
built from length buckets (little padding), optional class weights, a tqdm bar on stderr, and evaluation on
the validation set (macro-F1) after every epoch. The best evaluation's weights, tokenizer and
``switchboard.json`` are saved to the output folder; with no validation set the last epoch is saved.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import write_manifest

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "finetune_classifier",
    "base_model_path",
    "idle_cores",
    "torch_threads",
    "classification_metrics",
    "gain_points",
    "format_gain",
    "format_table",
]


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 2
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    class_weighted: bool = False  # weight the loss by inverse class frequency
    patience: int | None = None  # stop after this many evaluations without a validation macro-F1 gain
    seed: int = 0
    threads: int | None = None  # torch threads for this (training) process; None: idle_cores()


@dataclass
class FinetuneResult:
    folder: Path
    validation: dict[str, Any]  # classification_metrics of the saved (best) weights; {} without validation
    history: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation
    train_seconds: float = 0.0
    steps: int = 0
    best_epoch: int = 0
    threads: int = 0


def idle_cores() -> int:
    """Cores not busy right now (cores minus the 1-minute load average), at least 1. On a shared machine
    more torch threads than idle cores is much slower, not faster (measured here: 1 thread 1.0 s/step,
    2 threads 4.8 s/step at load 4.5 on 2 cores)."""
    import os

    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on this platform
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block (training, a trainer's evaluation) with ``n`` torch threads, then restore the count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n or idle_cores())
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def base_model_path() -> Path:
    """The packaged all-MiniLM-L6-v2 (a BertModel folder), the default encoder to fine-tune."""
    from models.retrieval.embedder import packaged_minilm_path

    return packaged_minilm_path()


# ---------------------------------------------------------------- evaluation


def classification_metrics(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix
    (rows: gold, columns: predicted, both in ``labels`` order)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=labels, zero_division=0
    )
    return {
        "n": len(gold),
        "accuracy": round(float(accuracy_score(gold, predicted)), 4),
        "macro_f1": round(
            float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)), 4
        ),
        "per_class": {
            label: {
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "support": int(s),
            }
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "confusion": {
            "labels": labels,
            "matrix": confusion_matrix(gold, predicted, labels=labels).tolist(),
        },
    }


def gain_points(model: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """The model's margin over a baseline (``classification_metrics`` of both, on the same texts) in points."""
    return {
        "accuracy_gain_points": round(100 * (model["accuracy"] - baseline["accuracy"]), 2),
        "macro_f1_gain_points": round(100 * (model["macro_f1"] - baseline["macro_f1"]), 2),
    }


def format_gain(metrics: dict[str, Any], baseline: str) -> str:
    """The line for ``gain_points`` (held in a trainer's ``metrics``) under its evaluation table."""
    return (
        f"gain over {baseline}: {metrics['accuracy_gain_points']:+.1f} accuracy points, "
        f"{metrics['macro_f1_gain_points']:+.1f} macro-F1 points"
    )


def format_table(
    results: dict[str, dict[str, Any]], columns: Sequence[str] = ("accuracy", "macro_f1")
) -> str:
    """A plain-text table: one row per model, the given metric columns plus per-class F1."""
    classes: list[str] = []
    for metrics in results.values():
        for label in metrics.get("per_class", {}):
            if label not in classes:
                classes.append(label)
    head = ["model", *columns, *(f"F1 {c}" for c in classes)]
    rows = [
        [
            name,
            *(f"{m.get(c, float('nan')):.4f}" for c in columns),
            *(f"{m.get('per_class', {}).get(c, {}).get('f1', float('nan')):.3f}" for c in classes),
        ]
        for name, m in results.items()
    ]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# ---------------------------------------------------------------- training


def _batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length examples: shuffle, sort inside buckets of 50 batches, shuffle the
    batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    bucket = batch_size * 50
    batches = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start : start + bucket], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _predict(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 64
) -> np.ndarray:
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    predicted = np.zeros(len(texts), dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            predicted[idx] = model(**batch).logits.argmax(dim=-1).numpy()
    model.train()
    return predicted


def finetune_classifier(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    *,
    labels: Sequence[str],
    out_dir: Path,
    task: str,
    validation_texts: Sequence[str] = (),
    validation_labels: Sequence[str] = (),
    config: FinetuneConfig = FinetuneConfig(),
    base_model: Path | None = None,
    progress: bool = True,
    manifest_extra: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune ``base_model`` (default: the packaged MiniLM) to classify into ``labels``; save the best
    weights + tokenizer + manifest into ``out_dir``."""
    import torch
    from tqdm import tqdm
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    labels = list(labels)
    unknown = set(train_labels) - set(labels)
    if unknown:
        raise ValueError(f"training labels {sorted(unknown)} are not in {labels}")
    if len(validation_texts) != len(validation_labels):
        raise ValueError("one label per validation text is required")
    base = Path(base_model) if base_model else base_model_path()
    base_name = base.name if base_model else "all-MiniLM-L6-v2"  # the packaged folder is just called "model"
    out_dir = Path(out_dir)
    label_ids = {label: i for i, label in enumerate(labels)}

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the loop has its own bar
    threads = config.threads or idle_cores()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    with torch_threads(threads):
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "classifier.* newly initialised" is the point of fine-tuning
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(base),
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id=label_ids,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        encoded = tokenizer(list(train_texts), truncation=True, max_length=config.max_length)["input_ids"]
        targets = torch.tensor([label_ids[label] for label in train_labels])
        weight = None
        if config.class_weighted:
            counts = torch.bincount(targets, minlength=len(labels)).float().clamp(min=1)
            weight = counts.sum() / (len(labels) * counts)
        loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

        no_decay = ("bias", "LayerNorm.weight", "layernorm", "norm")
        params = [
            {
                "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
                "weight_decay": config.weight_decay,
            },
            {
                "params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
                "weight_decay": 0.0,
            },
        ]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
        steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
        total = steps_per_epoch * config.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, int(total * config.warmup_ratio), total)
        rng = random.Random(config.seed)
        lengths = [len(ids) for ids in encoded]

        def save(metrics: dict[str, Any]) -> None:
            model.save_pretrained(str(out_dir))
            tokenizer.save_pretrained(str(out_dir))
            write_manifest(
                out_dir,
                kind="sequence_classifier",
                task=task,
                labels=labels,
                base_model=base_name,
                max_length=config.max_length,
                metrics={"validation": {k: metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}},
                training=asdict(config),
                **(manifest_extra or {}),
            )

        result = FinetuneResult(folder=out_dir, validation={}, threads=threads)
        best = -1.0
        stale = 0
        started = time.perf_counter()
        model.train()
        bar = tqdm(
            total=total, desc=f"fine-tuning {task}", unit="step", file=sys.stderr, disable=not progress
        )
        smooth = None
        with bar:
            for epoch in range(1, config.epochs + 1):
                for batch_idx in _batches(lengths, config.batch_size, rng):
                    batch = tokenizer.pad({"input_ids": [encoded[i] for i in batch_idx]}, return_tensors="pt")
                    logits = model(**batch).logits
                    loss = loss_fn(logits, targets[batch_idx])
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    result.steps += 1
                    value = loss.item()
                    smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
                    bar.set_postfix(epoch=epoch, loss=f"{smooth:.3f}", refresh=False)
                    bar.update(1)
                row: dict[str, float] = {"epoch": epoch, "train_loss": round(smooth or 0.0, 4)}
                if validation_texts:
                    predicted = _predict(model, tokenizer, validation_texts, config.max_length)
                    metrics = classification_metrics(
                        list(validation_labels), [labels[int(i)] for i in predicted], labels
                    )
                    row.update(val_accuracy=metrics["accuracy"], val_macro_f1=metrics["macro_f1"])
                    bar.set_postfix(epoch=epoch, loss=f"{smooth:.3f}", val_f1=f"{metrics['macro_f1']:.3f}")
                    if metrics["macro_f1"] > best:
                        best, stale = metrics["macro_f1"], 0
                        result.validation, result.best_epoch = metrics, epoch
                        save(metrics)
                    else:
                        stale += 1
                    result.history.append(row)
                    if config.patience is not None and stale >= config.patience:
                        break
                else:
                    result.history.append(row)
            if not validation_texts:
                result.best_epoch = config.epochs
                save({})
        result.train_seconds = round(time.perf_counter() - started, 1)
        return result


# ---------------------------------------------------------------- the trainers' shared command line


def _semver(value: str) -> str:
    if not re.fullmatch(r"\d+\.\d+\.\d+", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a semantic version X.Y.Z")
    return value


def run_training_cli(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    name: str,
    train: Any,  # (settings, out_dir, *, small, seed, progress, threads) -> TrainedModel
    table: Any,  # (TrainedModel) -> str, the evaluation table printed to stdout
) -> int:
    """``--small``, ``--out``, ``--no-register``, ``--alias``, ``--semver``, ``--seed``, ``--quiet``,
    ``--threads``."""
    import logging
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..config import Settings
    from .common import register_trained

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--small", action="store_true", help="quick run on a small sample (for tests/smoke)")
    parser.add_argument(
        "--out", type=Path, help=f"model folder to write (default: <data_dir>/training/{name})"
    )
    parser.add_argument("--no-register", action="store_true", help="train and evaluate only; no MLflow")
    parser.add_argument(
        "--alias",
        choices=("champion", "challenger", "auto", "none"),
        default="auto",
        help="alias for the registered version (auto: champion if there is none yet and the model beats "
        "its baseline, else challenger)",
    )
    parser.add_argument(
        "--semver", type=_semver, help="semantic version tag (default: next minor after the highest)"
    )
    parser.add_argument("--seed", type=int, default=0, help="split, sampling and training seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads for training (default: the idle cores at start; the reranker: 1)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    settings = Settings()
    out = args.out or settings.data_dir / "training" / name
    try:
        trained = train(
            settings, out, small=args.small, seed=args.seed, progress=not args.quiet, threads=args.threads
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(trained))
    print(f"model folder: {trained.folder}")
    if args.no_register:
        return 0
    version = register_trained(
        trained, settings, alias=None if args.alias == "none" else args.alias, semver=args.semver
    )
    alias = f" @{version.alias}" if version.alias else ""
    print(f"registered {version.uri} (semver {version.semver}){alias} in {settings.resolved_mlflow_uri}")
    return 0
