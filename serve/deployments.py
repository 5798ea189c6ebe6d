"""One Ray Serve deployment per model. Each is a thin shim: build the engine with the same builder the
in-process path uses, and batch calls across sessions with ``@serve.batch``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
from ray import serve

from models.text.redaction import PiiDetectionError, RedactionResult
from pipelines.asr_queue import AsrQueue
from pipelines.backends import (
    build_asr,
    build_embedder,
    build_guardrail,
    build_intent,
    build_retriever,
    build_sentiment,
    build_speaker_embedder,
)
from pipelines.config import Settings

__all__ = [
    "Guardrail",
    "Sentiment",
    "Embedder",
    "IntentClassifier",
    "KnowledgeBase",
    "Asr",
    "SpeakerEmbedder",
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_BATCH = dict(max_batch_size=32, batch_wait_timeout_s=0.002)


class _ModelDeployment:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = Settings(**settings)

    async def ready(self) -> str:
        return type(self).__name__


@serve.deployment(name="guardrail", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0.2})
class Guardrail(_ModelDeployment):
    """PII redaction (Presidio + spaCy NER + checksum-validated patterns) and the content filter."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.model = build_guardrail(self.settings)
        self.model.redact_batch(["warm-up: Jane Doe, jane@example.com, 415-555-0100"])  # first call is slow

    async def redact(self, text: str) -> RedactionResult:
        result = await self._redact(text)
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch(**_BATCH)
    async def _redact(self, texts: list[str]) -> list[RedactionResult | PiiDetectionError]:
        try:
            return await asyncio.to_thread(self.model.redact_batch, texts)
        except PiiDetectionError:
            # One bad text must not send every session's message in this batch to review: retry one by one.
            return await asyncio.to_thread(self._one_by_one, texts)

    def _one_by_one(self, texts: list[str]) -> list[RedactionResult | PiiDetectionError]:
        results: list[RedactionResult | PiiDetectionError] = []
        for text in texts:
            try:
                results.append(self.model.redact(text))
            except PiiDetectionError as exc:
                results.append(exc)
        return results


@serve.deployment(name="sentiment", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0.1})
class Sentiment(_ModelDeployment):
    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.model = build_sentiment(self.settings)

    @serve.batch(**_BATCH)
    async def score(self, texts: list[str]) -> list[Any]:
        return await asyncio.to_thread(self.model.score_batch, texts)


@serve.deployment(name="embedder", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0.3})
class Embedder(_ModelDeployment):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, normalised)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.model = build_embedder(self.settings)
        self.model.embed_batch(["warm-up"])

    @serve.batch(**_BATCH)
    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        vectors = await asyncio.to_thread(self.model.embed_batch, texts)
        return list(vectors)


@serve.deployment(name="intent", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0.1})
class IntentClassifier(_ModelDeployment):
    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.model = build_intent(self.settings)

    async def predict(self, text: str, vector: np.ndarray) -> Any:
        return await self._predict((text, vector))

    @serve.batch(**_BATCH)
    async def _predict(self, items: list[tuple[str, np.ndarray]]) -> list[Any]:
        texts = [t for t, _ in items]
        vectors = np.stack([v for _, v in items])
        return self.model.predict_batch(texts, vectors)


@serve.deployment(name="knowledge_base", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0.1})
class KnowledgeBase(_ModelDeployment):
    """FAISS search over the embedded knowledge base."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.model = build_retriever(self.settings)

    async def search(self, vector: np.ndarray, k: int, prefer: str | None = None) -> list[Any]:
        return await self._search((vector, k, prefer))

    @serve.batch(**_BATCH)
    async def _search(self, items: list[tuple[np.ndarray, int, str | None]]) -> list[Any]:
        k = max(k for _, k, _ in items)
        hits = self.model.search_batch(np.stack([v for v, _, _ in items]), k, [p for _, _, p in items])
        return [h[:k_i] for h, (_, k_i, _) in zip(hits, items, strict=True)]


@serve.deployment(name="asr", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
class Asr(_ModelDeployment):
    """Streaming ASR for every session: ``final`` calls use the accurate chain (retries, backup backend),
    ``partial`` calls the fast model. One priority queue orders the work across sessions (finals first, the
    newest partial per stream next; see ``pipelines.asr_queue``) and batches finals when the engine batches."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        engines = build_asr(self.settings)
        silence = np.zeros(16000, dtype=np.float32)
        for engine in {id(e): e for e in engines.values()}.values():
            engine.transcribe(silence)  # load weights and warm caches before the first call
        self.queue = AsrQueue(engines, workers=self.settings.asr_workers)

    async def transcribe(self, audio: np.ndarray, role: str, key: str | None = None) -> Any:
        return await self.queue.transcribe(audio, role, key)


@serve.deployment(name="speaker_embedder", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.2})
class SpeakerEmbedder(_ModelDeployment):
    """Voice embeddings (resemblyzer) for online diarization of mono calls."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.model = build_speaker_embedder(self.settings)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def embed(self, audios: list[np.ndarray]) -> list[Any]:
        return await asyncio.to_thread(lambda: [self.model.embed(a) for a in audios])
