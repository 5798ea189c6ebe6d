"""The async interfaces the session pipeline talks to models through.

In tests and on a laptop they are implemented in-process (``pipelines.local``); in the cluster by Ray Serve
deployment handles with the same method names (``serve.handles``). The pipeline never knows which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from models.asr.base import Transcription
    from models.diarization.base import SpeakerEmbedding
    from models.generation.base import GenerationChunk, GenerationRequest
    from models.text.intent import IntentPrediction
    from models.text.redaction import RedactionResult
    from models.text.sentiment import SentimentScore

    from .model_services import SearchResult

__all__ = [
    "GuardrailPort",
    "SentimentPort",
    "EmbedderPort",
    "IntentPort",
    "RetrieverPort",
    "AsrPort",
    "SpeakerPort",
    "FeaturePort",
    "GeneratorPort",
    "ModelPorts",
]


class GuardrailPort(Protocol):
    async def redact(self, text: str) -> RedactionResult: ...


class SentimentPort(Protocol):
    async def score(self, text: str, variant: str = "champion") -> SentimentScore:
        """``variant``: the session's A/B arm (``champion`` or ``challenger``)."""
        ...


class EmbedderPort(Protocol):
    async def embed(self, text: str) -> np.ndarray: ...


class IntentPort(Protocol):
    async def predict(self, text: str, vector: np.ndarray, variant: str = "champion") -> IntentPrediction: ...


class RetrieverPort(Protocol):
    async def search(
        self,
        vector: np.ndarray,
        k: int,
        prefer: str | None = None,
        text: str | None = None,
        variant: str = "champion",
    ) -> SearchResult:
        """Top-``k`` articles; with ``text`` the registered reranker reorders FAISS's candidates."""
        ...


class AsrPort(Protocol):
    async def transcribe(self, audio: np.ndarray, role: str, key: str | None = None) -> Transcription:
        """``role`` is ``partial`` (fast model) or ``final`` (accurate model, with failover). ``key`` names the
        stream a partial belongs to: a newer partial for the same key supersedes a waiting one."""
        ...


class SpeakerPort(Protocol):
    async def embed(self, audio: np.ndarray) -> SpeakerEmbedding | None:
        """A voice embedding for one utterance (None when there is too little speech to tell)."""
        ...


class GeneratorPort(Protocol):
    """Any ``models.generation`` backend in this process, or the ``response_generator`` deployment."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Text deltas of the reply (continuous batching across sessions happens behind this call)."""
        ...


class FeaturePort(Protocol):
    """One tenant's customer's online features (Feast), scoped by the tenant in the data layer: the same customer
    id under another tenant is another customer. Never raises for the store: defaults on timeout or error."""

    async def online(self, tenant: str, customer_id: str) -> Any: ...

    async def push_session_async(
        self, tenant: str, customer_id: str, *, duration_s: float, sentiment_avg: float | None, escalated: int
    ) -> Any: ...


class ModelPorts:
    """The bundle of model backends one pipeline uses."""

    def __init__(
        self,
        guardrail: GuardrailPort,
        sentiment: SentimentPort,
        embedder: EmbedderPort,
        intent: IntentPort,
        retriever: RetrieverPort,
        asr: AsrPort | None = None,
        speakers: SpeakerPort | None = None,
        generator: GeneratorPort | None = None,
    ) -> None:
        self.guardrail = guardrail
        self.sentiment = sentiment
        self.embedder = embedder
        self.intent = intent
        self.retriever = retriever
        self.asr = asr
        self.speakers = speakers
        self.generator = generator
