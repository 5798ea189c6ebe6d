"""How each model backend is built from settings, and the in-process implementation of the model ports.

Serve deployments (``serve/deployments.py``) call the same builders and expose the same method names with
cross-session batching; tests and the laptop path use ``local_ports`` directly.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.text.intent import IntentPrediction
from models.text.sentiment import SentimentScore

from .config import Settings
from .model_services import IntentService, RetrieverService, SearchResult, SentimentService
from .ports import ModelPorts

if TYPE_CHECKING:
    from models.retrieval.embedder import MiniLMEmbedder
    from models.text.pii import PiiDetector
    from models.text.redaction import RedactionResult

__all__ = [
    "build_guardrail",
    "build_sentiment",
    "build_embedder",
    "build_intent",
    "build_retriever",
    "build_asr",
    "build_speaker_embedder",
    "build_generator",
    "local_ports",
    "LocalAsr",
    "LocalSpeakers",
]


def build_guardrail(settings: Settings) -> PiiDetector:
    from models.text.pii import PiiDetector

    return PiiDetector(spacy_model=settings.spacy_model)


def build_sentiment(settings: Settings) -> SentimentService:
    """The registered ``sentiment_classifier`` (hot-reloaded), VADER rules when none is registered."""
    return SentimentService(settings)


def build_embedder(settings: Settings) -> MiniLMEmbedder:
    from models.retrieval.embedder import MiniLMEmbedder

    return MiniLMEmbedder(settings.embedding_model_path)


def build_intent(settings: Settings) -> IntentService:
    """The registered ``intent_classifier``, embedding similarity to the labelled examples otherwise."""
    return IntentService(settings)


def build_retriever(settings: Settings) -> RetrieverService:
    """FAISS over the KB index, reranked by the registered ``kb_reranker`` when there is one."""
    return RetrieverService(settings)


class _Local:
    """Runs a sync model call in a worker thread so the event loop keeps serving other sessions."""

    def __init__(self, model: Any) -> None:
        self.model = model

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(partial(fn, *args))


class LocalGuardrail(_Local):
    async def redact(self, text: str) -> RedactionResult:
        return await self._call(self.model.redact, text)


class LocalSentiment(_Local):
    async def score(self, text: str, variant: str = "champion") -> SentimentScore:
        return (await self._call(self.model.score_batch, [text], [variant]))[0]


class LocalEmbedder(_Local):
    async def embed(self, text: str) -> np.ndarray:
        return (await self._call(self.model.embed_batch, [text]))[0]


class LocalIntent(_Local):
    async def predict(self, text: str, vector: np.ndarray, variant: str = "champion") -> IntentPrediction:
        return (await self._call(self.model.predict_batch, [text], np.atleast_2d(vector), [variant]))[0]


class LocalRetriever(_Local):
    async def search(
        self,
        vector: np.ndarray,
        k: int,
        prefer: str | None = None,
        text: str | None = None,
        variant: str = "champion",
    ) -> SearchResult:
        return (
            await self._call(self.model.search_batch, np.atleast_2d(vector), k, [prefer], [text], [variant])
        )[0]


def _whisper(spec: str, settings: Settings):
    """`tiny.en` / `base` (packaged), a CTranslate2 folder (faster-whisper), or a Hugging Face transformers
    Whisper folder (a customer's fine-tune: it has `model.safetensors` or `pytorch_model.bin`)."""
    from models.asr.whisper import FasterWhisperAsr, TransformersWhisperAsr
    from models.registry import download_model_folder, is_mlflow_uri

    options = {
        "cpu_threads": settings.asr_cpu_threads,
        "num_workers": settings.asr_workers,
        "beam_size": settings.asr_final_beam_size,
        "window_margin_s": settings.asr_window_margin_s,
    }
    if spec in ("tiny.en", "base"):
        return FasterWhisperAsr.packaged(spec, **options)
    if is_mlflow_uri(spec):  # a folder registered in MLflow (`python -m pipelines.registry register-folder`)
        path = download_model_folder(
            spec, tracking_uri=settings.resolved_mlflow_uri, cache_dir=settings.data_dir / "model-cache"
        )
        name = spec
    else:
        path, name = Path(spec), None
    if not path.is_dir():
        raise FileNotFoundError(
            f"ASR model {spec!r}: use tiny.en, base, an existing model folder, or an MLflow models:/ URI"
        )
    if (path / "model.safetensors").exists() or (path / "pytorch_model.bin").exists():
        return TransformersWhisperAsr(path, name=name, cpu_threads=settings.asr_cpu_threads)
    return FasterWhisperAsr(path, name=name, **options)


def build_asr(settings: Settings) -> dict[str, Any]:
    """ASR engines per role. ``final``: [Riva if configured] → final model → backup model, as one
    FallbackAsr (retries with backoff, then the next engine). ``partial``: the fast model."""
    from models.asr.fallback import FallbackAsr

    engines: dict[str, Any] = {}

    def engine(spec: str):
        if spec not in engines:
            engines[spec] = _whisper(spec, settings)
        return engines[spec]

    chain = []
    if settings.asr_riva_uri:
        from models.asr.riva import RivaAsr

        chain.append(RivaAsr(settings.asr_riva_uri))
    chain.append(engine(settings.asr_final_model))
    if settings.asr_backup_model and settings.asr_backup_model != settings.asr_final_model:
        chain.append(engine(settings.asr_backup_model))
    partial = engine(settings.asr_partial_model)
    if hasattr(partial, "variant"):  # partials: only the text matters, and soon
        partial = partial.variant(
            beam_size=settings.asr_partial_beam_size,
            word_timestamps=False,
            temperature=0.0,
            window_margin_s=settings.asr_partial_window_margin_s,
        )
    return {"final": FallbackAsr(chain, retries=2), "partial": partial}


def build_speaker_embedder(settings: Settings):
    from models.diarization.online import ResemblyzerEmbedder

    return ResemblyzerEmbedder()


def build_generator(settings: Settings) -> Any:
    """The suggested-reply generator for ``settings.generation_backend`` (None for ``none``). Raises
    FileNotFoundError with what to run when the model is not there yet."""
    backend = settings.generation_backend
    if backend == "none":
        return None
    if backend == "openai":
        from models.generation.openai_http import OpenAIChatGenerator

        if not settings.generation_openai_url:
            raise ValueError("generation_backend=openai needs SWITCHBOARD_GENERATION_OPENAI_URL (…/v1)")
        return OpenAIChatGenerator(
            settings.generation_openai_url,
            model=settings.generation_openai_model,
            api_key=settings.generation_openai_api_key,
            timeout_s=settings.generation_timeout_s,
        )
    from .generation import resolve_generator_model

    folder, name = resolve_generator_model(settings)
    if backend == "transformers":
        from models.generation.hf_generate import TransformersGenerator

        return TransformersGenerator(folder, name=name)
    from models.generation.vllm_engine import VllmGenerator

    return VllmGenerator(
        folder,
        name=name,
        kv_cache_gib=settings.generation_kv_cache_gib,
        max_num_seqs=settings.generation_max_num_seqs,
    )


def local_ports(settings: Settings) -> ModelPorts:
    """Every model in this process (tests, notebooks, the single-process dev path)."""
    return ModelPorts(
        guardrail=LocalGuardrail(build_guardrail(settings)),
        sentiment=LocalSentiment(build_sentiment(settings)),
        embedder=LocalEmbedder(build_embedder(settings)),
        intent=LocalIntent(build_intent(settings)),
        retriever=LocalRetriever(build_retriever(settings)),
    )


class LocalAsr(_Local):
    """``model`` is the dict from ``build_asr`` (role → engine); calls go through the same priority queue
    as the Serve deployment's."""

    def __init__(self, model: Any, workers: int = 1) -> None:
        super().__init__(model)
        self.workers = workers
        self._queue: Any = None

    async def transcribe(self, audio: np.ndarray, role: str, key: str | None = None) -> Any:
        if self._queue is None:
            from .asr_queue import AsrQueue

            self._queue = AsrQueue(self.model, workers=self.workers)
        return await self._queue.transcribe(audio, role, key)


class LocalSpeakers(_Local):
    async def embed(self, audio: np.ndarray) -> Any:
        return await self._call(self.model.embed, audio)
