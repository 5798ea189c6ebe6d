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


class _ClassifierService:
    """Shared by the sentiment and intent services: label results with model and variant, fall back to
    the rules for a batch the model fails on, add the shadow challenger's results."""

    name = "model"

    def __init__(self, served: ServedModel[Any], settings: Settings) -> None:
        self.served = served
        self.shadow = settings.ab_mode == "shadow"

    def _labelled(self, slot: Loaded[Any], call: Callable[[Any], list[Any]]) -> list[Any]:
        try:
            return [replace(r, model=slot.label, variant=slot.variant) for r in call(slot.model)]
        except Exception as exc:
            if slot.is_rules:
                raise
            log.error("%s model %s failed (%s); rules for this batch", self.name, slot.label, exc)
            rules = self.served.get_rules().model
            return [replace(r, model=RULES_FALLBACK, variant="rules") for r in call(rules)]

    def _run(
        self,
        n: int,
        variants: Sequence[str] | None,
        call: Callable[[Any, list[int]], list[Any]],
    ) -> list[Any]:
        """``call(model, indices)`` runs the model on the requests at ``indices``."""
        out = _run_grouped(
            self.served, n, variants, lambda slot, idx: self._labelled(slot, lambda m: call(m, idx))
        )
        if self.shadow and self.served.has("challenger"):
            everyone = list(range(n))
            shadow = self._labelled(self.served.get("challenger"), lambda m: call(m, everyone))
            out = [replace(r, shadow=sh) for r, sh in zip(out, shadow, strict=True)]
        return out


class SentimentService(_ClassifierService):
    """``sentiment_classifier`` from the registry (or a folder); the VADER lexicon scorer as rules."""

    name = "sentiment"

    def __init__(self, settings: Settings, *, refresh: bool = True) -> None:
        served: ServedModel[Any] = ServedModel(
            "sentiment_classifier",
            settings.sentiment_model,
            loader=_load_sentiment,
            rules=LexiconSentiment,
            settings=settings,
            refresh=refresh,
        )
        super().__init__(served, settings)

    def score_batch(self, texts: list[str], variants: Sequence[str] | None = None) -> list[SentimentScore]:
        return self._run(len(texts), variants, lambda m, idx: m.score_batch([texts[i] for i in idx]))


class IntentService(_ClassifierService):
    """``intent_classifier`` from the registry; embedding similarity to the labelled examples as rules."""

    name = "intent"

    def __init__(self, settings: Settings, *, refresh: bool = True) -> None:
        served: ServedModel[Any] = ServedModel(
            "intent_classifier",
            settings.intent_model,
            loader=_load_intent,
            rules=lambda: _similarity_intent(settings),
            settings=settings,
            refresh=refresh,
        )
        super().__init__(served, settings)

    def predict_batch(
        self, texts: list[str], vectors: np.ndarray, variants: Sequence[str] | None = None
    ) -> list[IntentPrediction]:
        return self._run(
            len(texts), variants, lambda m, idx: m.predict_batch([texts[i] for i in idx], vectors[idx])
        )


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
