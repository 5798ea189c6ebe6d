"""A fine-tuned cross-encoder that rescores (query, passage) pairs and reorders the FAISS hits.

The model folder is written by ``pipelines.training.reranker``: Hugging Face weights of a sequence classifier
with one output (a relevance logit), the tokenizer, and ``switchboard.json`` with ``kind: cross_encoder``,
``max_length`` and ``faiss_weight``. A reranked hit's score is ``logit + faiss_weight * faiss_score``: the
first-stage cosine is interpolated in (the weight is fitted at training time on generated questions, not on the
evaluation set; 0 means the cross-encoder alone). Loads from the local folder only (never a hub) and leaves torch's global thread count alone:
the serving process decides that.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..text.classifier import read_folder_manifest
from .index import Hit

__all__ = ["CrossEncoderReranker", "passage_for"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def passage_for(hit: Hit) -> str:
    """What the cross-encoder reads for a hit: its best chunk (title and tags included), else the title and
    reply (an index built before chunk texts were stored)."""
    return hit.text or f"{hit.title}\n{hit.reply}".strip()


class CrossEncoderReranker:
    """``score(query, passages)`` → relevance logits; ``rerank_batch`` reorders FAISS hits with them."""

    def __init__(self, folder: Path, name: str | None = None, *, batch_size: int = 128) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.folder = Path(folder)
        manifest = read_folder_manifest(self.folder)
        if manifest.get("kind") != "cross_encoder":
            raise ValueError(f"{folder} holds a {manifest.get('kind')!r} model, not a cross_encoder")
        self.manifest = manifest
        self.max_length = int(manifest.get("max_length", 256))
        self.faiss_weight = float(manifest.get("faiss_weight", 0.0))
        self.batch_size = batch_size
        self.name = name or self.folder.name
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self._model = AutoModelForSequenceClassification.from_pretrained(str(self.folder))
        if self._model.config.num_labels != 1:
            raise ValueError(
                f"{folder}: a cross-encoder has one output, this model has {self._model.config.num_labels}"
            )
        self._model.eval()

    def score_pairs(self, queries: list[str], passages: list[str]) -> np.ndarray:
        """The cross-encoder's relevance logit of each (query, passage) pair, float32."""
        out = np.zeros(len(queries), dtype=np.float32)
        if not queries:
            return out
        order = sorted(range(len(queries)), key=lambda i: len(queries[i]) + len(passages[i]))  # less padding
        with self._torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._tokenizer(
                    [queries[i] for i in idx],
                    [passages[i] for i in idx],
                    truncation="only_second",
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                out[idx] = self._model(**batch).logits[:, 0].float().numpy()
        return out

    def score(self, query: str, passages: list[str]) -> np.ndarray:
        """One relevance logit per passage (higher: more relevant), float32."""
        return self.score_pairs([query] * len(passages), list(passages))

    def rerank_batch(self, queries: list[str], hits: list[list[Hit]], k: int) -> list[list[Hit]]:
        """Rescore every (query, hit) pair in one batched pass; per query the top ``k`` hits, best first, each
        carrying the reranker's score (logit + ``faiss_weight`` x the hit's FAISS score, 4 places) in ``score``."""
        if len(queries) != len(hits):
            raise ValueError("one hit list per query is required")
        flat_q = [q for q, row in zip(queries, hits, strict=True) for _ in row]
        flat_p = [passage_for(h) for row in hits for h in row]
        scores = self.score_pairs(flat_q, flat_p)
        if self.faiss_weight:
            scores = scores + np.float32(self.faiss_weight) * np.array(
                [h.score for row in hits for h in row], np.float32
            )
        results, at = [], 0
        for row in hits:
            row_scores = scores[at : at + len(row)]
            at += len(row)
            order = sorted(
                range(len(row)), key=lambda j: -float(row_scores[j])
            )  # stable: ties keep FAISS order
            results.append([replace(row[j], score=round(float(row_scores[j]), 4)) for j in order[:k]])
        return results

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "cross_encoder",
            "base_model": self.manifest.get("base_model"),
            "max_length": self.max_length,
            "faiss_weight": self.faiss_weight,
        }
