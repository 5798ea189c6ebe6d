"""The application graph: one deployment per model, the ingress holding their handles.

``build_app`` is the Serve app builder named in ``cluster/serve-*.yaml`` (``import_path: serve.app:build_app``);
its ``args.settings`` override the environment (``SWITCHBOARD_*``). Serve YAML only tunes operations.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from ray.serve import Application

from pipelines.config import Settings

from .deployments import (
    Asr,
    Embedder,
    Guardrail,
    IntentClassifier,
    KnowledgeBase,
    ResponseGenerator,
    Sentiment,
    SpeakerEmbedder,
)
from .ingress import Ingress

__all__ = ["AppArgs", "build_app", "settings_from_args"]


class AppArgs(BaseModel):
    settings: dict[str, Any] = Field(default_factory=dict, description="overrides of SWITCHBOARD_* settings")


def settings_from_args(args: AppArgs | dict[str, Any] | None) -> Settings:
    args = AppArgs.model_validate(args or {})
    return Settings(**args.settings)


def deployment_names(settings: Settings) -> set[str]:
    """The deployments ``build_app`` makes for these settings: voice and generation are optional."""
    names = {"ingress", "guardrail", "sentiment", "embedder", "intent", "knowledge_base"}
    if settings.voice:
        names |= {"asr", "speaker_embedder"}
    if settings.generation_backend != "none":
        names.add("response_generator")
    return names


def build_app(args: dict[str, Any] | None = None) -> Application:
    settings = settings_from_args(args)
    if not settings.dev_token:
        from .auth import resolve_dev_token

        settings = settings.model_copy(update={"dev_token": resolve_dev_token(settings)})
    s = settings.model_dump(mode="json")
    optional = {"asr": Asr.bind(s), "speakers": SpeakerEmbedder.bind(s)} if settings.voice else {}
    if settings.generation_backend != "none":
        optional["generator"] = ResponseGenerator.bind(s)
    return Ingress.bind(
        Guardrail.bind(s),
        Sentiment.bind(s),
        Embedder.bind(s),
        IntentClassifier.bind(s),
        KnowledgeBase.bind(s),
        s,
        **optional,
    )
