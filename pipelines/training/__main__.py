"""Train and register switchboard's text models: ``python -m pipelines.training all`` (or one of them).

    python -m pipelines.training all                 # sentiment, intent, reranker → MLflow
    python -m pipelines.training all --if-missing    # skip models already registered (make demo)
    python -m pipelines.training sentiment --help    # one model, with its own options

Each model is evaluated on a held-out set, logged to MLflow (params, metrics, evaluation report, weights)
and registered with a semantic-version tag: the first version becomes ``@champion``, later ones
``@challenger`` (promote with ``python -m pipelines.registry promote NAME``). A model that does not beat
the model serving today on its held-out set (lexicon, embedding similarity, FAISS order) is registered as
``@challenger`` only.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
import time
from pathlib import Path

from ..config import Settings
from .common import register_trained, registered_version

MODELS = {
    "sentiment": ("pipelines.training.sentiment", "train_sentiment", "sentiment_classifier"),
    "intent": ("pipelines.training.intent", "train_intent", "intent_classifier"),
    "reranker": ("pipelines.training.reranker", "train_reranker", "kb_reranker"),
}


def train_all(
    settings: Settings,
    which: list[str],
    *,
    small: bool = False,
    if_missing: bool = False,
    alias: str | None = "auto",
) -> list[dict]:
    results = []
    for key in which:
        module_name, fn_name, registered = MODELS[key]
        # a challenger counts: a model that did not beat its baseline is never more, and must not retrain per run
        if if_missing and registered_version(registered, settings) is not None:
            print(f"==> {registered}: already registered, skipping (train again without --if-missing)")
            continue
        print(f"==> training {registered}{' (small)' if small else ''}", flush=True)
        train = getattr(importlib.import_module(module_name), fn_name)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"train-{key}-") as tmp:
            model = train(settings, Path(tmp) / registered, small=small)
            version = register_trained(model, settings, alias=alias)
        took = time.perf_counter() - started
        print(
            f"    {version.uri} ({version.semver}{', @' + version.alias if version.alias else ''}) in {took:.0f}s"
        )
        if model.beats_baseline is False and version.alias == "challenger":
            print(
                "    it did not beat the model serving today on the held-out set: registered as @challenger only"
            )
        for metric, value in sorted(model.metrics.items()):
            print(f"    {metric:<32} {value:.4f}")
        results.append(
            {"model": registered, "version": version.version, "semver": version.semver, **model.metrics}
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.training",
        description="Train, evaluate and register switchboard's models in MLflow (embedded SQLite store unless "
        "SWITCHBOARD_MLFLOW_TRACKING_URI is set). For one model's own options: "
        "python -m pipelines.training.sentiment --help (or .intent, .reranker).",
    )
    parser.add_argument("which", choices=["all", *MODELS], help="what to train")
    parser.add_argument("--small", action="store_true", help="quick, smaller runs (tests, smoke checks)")
    parser.add_argument(
        "--if-missing", action="store_true", help="skip models that are already registered (cached setup)"
    )
    parser.add_argument(
        "--alias",
        default="auto",
        choices=["auto", "champion", "challenger", "none"],
        help="alias for the new version (auto: champion if there is none, else challenger)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = Settings()
    which = list(MODELS) if args.which == "all" else [args.which]
    try:
        train_all(
            settings,
            which,
            small=args.small,
            if_missing=args.if_missing,
            alias=None if args.alias == "none" else args.alias,
        )
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
