"""The text-model services a deployment replica (or the in-process path) runs: registered model first,
rule-based version as fallback, champion/challenger per session, shadow scoring.

Each service takes a batch of requests that may belong to different sessions and variants, groups them by
variant, and labels every result with the model and variant that produced it. A model that raises is
replaced for that batch by the rule-based version, labelled ``rules:fallback``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from models.retrieval.index import ArticleIndex, Hit
from models.text.intent import IntentPrediction, SimilarityIntentModel
from models.text.sentiment import LexiconSentiment, SentimentScore

from .config import Settings
from .indexing import INTENT_FILE
from .served import RULES_FALLBACK, Loaded, ServedModel

__all__ = ["SentimentService", "IntentService", "RetrieverService", "SearchResult"]

log = logging.getLogger("switchboard.models")

R = TypeVar("R")


def _by_variant(variants: Sequence[str] | None, n: int) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, variant in enumerate(variants or ["champion"] * n):
        groups.setdefault(variant, []).append(i)
    return groups


def _run_grouped(
    served: ServedModel[Any],
    n: int,
    variants: Sequence[str] | None,
    run: Callable[[Loaded[Any], list[int]], list[R]],
) -> list[R]:
    out: list[Any] = [None] * n
    for variant, idx in _by_variant(variants, n).items():
        for i, result in zip(idx, run(served.get(variant), idx), strict=True):
            out[i] = result
    return out


class SentimentService:
    """``sentiment_classifier`` from the registry (or a folder); the VADER lexicon scorer as rules."""

    def __init__(self, settings: Settings, *, refresh: bool = True) -> None:
        self.served: ServedModel[Any] = ServedModel(
            "sentiment_classifier",
            settings.sentiment_model,
            loader=_load_sentiment,
            rules=LexiconSentiment,
            settings=settings,
            refresh=refresh,
        )
        self.shadow = settings.ab_mode == "shadow"

    def _score(self, slot: Loaded[Any], texts: list[str]) -> list[SentimentScore]:
        try:
            scores = slot.model.score_batch(texts)
            return [replace(s, model=slot.label, variant=slot.variant) for s in scores]
        except Exception as exc:
            if slot.is_rules:
                raise
            log.error("sentiment model %s failed (%s); rules for this batch", slot.label, exc)
            rules = self.served.get_rules()
            return [replace(s, model=RULES_FALLBACK, variant="rules") for s in rules.model.score_batch(texts)]

    def score_batch(self, texts: list[str], variants: Sequence[str] | None = None) -> list[SentimentScore]:
        out = _run_grouped(
            self.served, len(texts), variants, lambda slot, idx: self._score(slot, [texts[i] for i in idx])
        )
        if self.shadow and self.served.has("challenger"):
            shadow = self._score(self.served.get("challenger"), texts)
            out = [replace(s, shadow=sh) for s, sh in zip(out, shadow, strict=True)]
        return out


class IntentService:
    """``intent_classifier`` from the registry; embedding similarity to the labelled examples as rules."""

    def __init__(self, settings: Settings, *, refresh: bool = True) -> None:
        self.served: ServedModel[Any] = ServedModel(
            "intent_classifier",
            settings.intent_model,
            loader=_load_intent,
            rules=lambda: _similarity_intent(settings),
            settings=settings,
            refresh=refresh,
        )
        self.shadow = settings.ab_mode == "shadow"

    def _predict(self, slot: Loaded[Any], texts: list[str], vectors: np.ndarray) -> list[IntentPrediction]:
        try:
            preds = slot.model.predict_batch(texts, vectors)
            return [replace(p, model=slot.label, variant=slot.variant) for p in preds]
        except Exception as exc:
            if slot.is_rules:
                raise
            log.error("intent model %s failed (%s); rules for this batch", slot.label, exc)
            rules = self.served.get_rules()
            return [
                replace(p, model=RULES_FALLBACK, variant="rules")
                for p in rules.model.predict_batch(texts, vectors)
            ]

    def predict_batch(
        self, texts: list[str], vectors: np.ndarray, variants: Sequence[str] | None = None
    ) -> list[IntentPrediction]:
        out = _run_grouped(
            self.served,
            len(texts),
            variants,
            lambda slot, idx: self._predict(slot, [texts[i] for i in idx], vectors[idx]),
        )
        if self.shadow and self.served.has("challenger"):
            shadow = self._predict(self.served.get("challenger"), texts, vectors)
            out = [replace(p, shadow=sh) for p, sh in zip(out, shadow, strict=True)]
        return out


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    reranker: str | None = None  # name@version of the cross-encoder that ordered the hits; None: FAISS order
    variant: str = "rules"


class RetrieverService:
    """FAISS search over the knowledge base, then the ``kb_reranker`` cross-encoder over the top
    ``rerank_candidates`` when one is registered."""

    def __init__(self, settings: Settings, *, refresh: bool = True) -> None:
        self.index = ArticleIndex.load(settings.resolved_index_dir)
        self.candidates = settings.rerank_candidates
        self.reranker: ServedModel[Any] = ServedModel(
            "kb_reranker",
            settings.reranker_model,
            loader=_load_reranker,
            rules=lambda: None,
            settings=settings,
            refresh=refresh,
        )

    def __len__(self) -> int:
        return len(self.index)

    def search_batch(
        self,
        vectors: np.ndarray,
        k: int,
        prefer: list[str | None] | None = None,
        texts: list[str | None] | None = None,
        variants: Sequence[str] | None = None,
    ) -> list[SearchResult]:
        n = len(vectors)
        texts = texts or [None] * n
        wide = max(k, self.candidates)
        candidates = self.index.search_batch(vectors, wide, prefer)

        def run(slot: Loaded[Any], idx: list[int]) -> list[SearchResult]:
            plain = [SearchResult(candidates[i][:k]) for i in idx]
            todo = [j for j, i in enumerate(idx) if texts[i] and candidates[i]]
            if slot.model is None or not todo:
                return plain
            try:
                reranked = slot.model.rerank_batch(
                    [texts[idx[j]] for j in todo], [candidates[idx[j]] for j in todo], k
                )
            except Exception as exc:
                log.error("reranker %s failed (%s); FAISS order for this batch", slot.label, exc)
                return [replace(r, reranker=RULES_FALLBACK) for r in plain]
            for j, hits in zip(todo, reranked, strict=True):
                plain[j] = SearchResult(hits, reranker=slot.label, variant=slot.variant)
            return plain

        return _run_grouped(self.reranker, n, variants, run)


# ---------------------------------------------------------------- loaders (folder → runtime model)


def _load_sentiment(folder: Path, label: str) -> Any:
    from models.text.classifier import SequenceClassifier
    from models.text.sentiment import TransformerSentiment

    return TransformerSentiment(SequenceClassifier(folder, name=label), name=label)


def _load_intent(folder: Path, label: str) -> Any:
    from models.text.classifier import SequenceClassifier
    from models.text.intent import TrainedIntentModel

    return TrainedIntentModel(SequenceClassifier(folder, name=label), name=label)


def _load_reranker(folder: Path, label: str) -> Any:
    from models.retrieval.reranker import CrossEncoderReranker

    return CrossEncoderReranker(folder, name=label)


def _similarity_intent(settings: Settings) -> SimilarityIntentModel:
    path = settings.resolved_index_dir / INTENT_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"no intent examples index at {path}: run `python -m pipelines.indexing build` (make does it for you)"
        )
    data = np.load(path)
    return SimilarityIntentModel(data["vectors"], [str(x) for x in data["labels"]])
