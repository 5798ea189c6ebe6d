"""Adapts Ray Serve deployment handles to the model ports the pipeline uses: ``await port.redact(text)``
becomes ``await handle.redact.remote(text)``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ray.serve.handle import DeploymentHandle

from pipelines.ports import ModelPorts

__all__ = ["HandlePort", "GeneratorHandlePort", "handle_ports"]


class HandlePort:
    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        bound = getattr(self._handle, method)

        async def call(*args: Any) -> Any:
            return await bound.remote(*args)

        return call


class GeneratorHandlePort:
    """The streaming generator behind a deployment handle: ``async for chunk in port.stream(request)``."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._stream = handle.options(stream=True)

    def stream(self, request: Any) -> Any:
        return self._stream.stream.remote(request)


def handle_ports(
    guardrail: DeploymentHandle,
    sentiment: DeploymentHandle,
    embedder: DeploymentHandle,
    intent: DeploymentHandle,
    retriever: DeploymentHandle,
    asr: DeploymentHandle | None = None,
    speakers: DeploymentHandle | None = None,
    generator: DeploymentHandle | None = None,
) -> ModelPorts:
    return ModelPorts(
        guardrail=HandlePort(guardrail),
        sentiment=HandlePort(sentiment),
        embedder=HandlePort(embedder),
        intent=HandlePort(intent),
        retriever=HandlePort(retriever),
        asr=HandlePort(asr) if asr is not None else None,
        speakers=HandlePort(speakers) if speakers is not None else None,
        generator=GeneratorHandlePort(generator) if generator is not None else None,
    )
