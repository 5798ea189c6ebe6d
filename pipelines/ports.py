"""The async interfaces the session pipeline talks to models through.

In tests and on a laptop they are implemented in-process (``pipelines.local``); in the cluster by Ray Serve
deployment handles with the same method names (``serve.handles``). The pipeline never knows which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from models.retrieval.index import Hit
    from models.text.intent import IntentPrediction
    from models.text.redaction import RedactionResult
    from models.text.sentiment import SentimentScore

__all__ = ["GuardrailPort", "SentimentPort", "EmbedderPort", "IntentPort", "RetrieverPort", "ModelPorts"]


class GuardrailPort(Protocol):
    async def redact(self, text: str) -> RedactionResult: ...


class SentimentPort(Protocol):
    async def score(self, text: str) -> SentimentScore: ...


class EmbedderPort(Protocol):
    async def embed(self, text: str) -> np.ndarray: ...


class IntentPort(Protocol):
    async def predict(self, text: str, vector: np.ndarray) -> IntentPrediction: ...


class RetrieverPort(Protocol):
    async def search(self, vector: np.ndarray, k: int, prefer: str | None = None) -> list[Hit]: ...


class ModelPorts:
    """The bundle of model backends one pipeline uses."""

    def __init__(
        self,
        guardrail: GuardrailPort,
        sentiment: SentimentPort,
        embedder: EmbedderPort,
        intent: IntentPort,
        retriever: RetrieverPort,
    ) -> None:
        self.guardrail = guardrail
        self.sentiment = sentiment
        self.embedder = embedder
        self.intent = intent
        self.retriever = retriever
