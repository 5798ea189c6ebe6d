"""Adapts Ray Serve deployment handles to the model ports the pipeline uses: ``await port.redact(text)``
becomes ``await handle.redact.remote(text)``.

Every call is a client span ``deployment <name>.<method>`` (a child of the current stage or event span). With
Ray Serve's tracing hook on (``serve.run`` sets it when ``trace_exporter`` is not ``none``), Serve carries that
span's context to the replica, whose ``replica_handle_request`` span descends from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ray.serve.handle import DeploymentHandle

from pipelines import tracing
from pipelines.ports import ModelPorts

__all__ = ["HandlePort", "GeneratorHandlePort", "handle_ports"]


class HandlePort:
    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        bound = getattr(self._handle, method)
        name = f"deployment {self._handle.deployment_name}.{method}"

        async def call(*args: Any) -> Any:
            with tracing.span(name, kind=tracing.SpanKind.CLIENT, deployment=self._handle.deployment_name):
                return await bound.remote(*args)

        return call


class GeneratorHandlePort:
    """The streaming generator behind a deployment handle: ``async for chunk in port.stream(request)``."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._stream = handle.options(stream=True)
        self._name = handle.deployment_name

    async def stream(self, request: Any) -> Any:
        # the span is made current only while the request is sent (Serve takes the trace context then); it is
        # ended, not detached, when the stream stops, so a consumer that stops early leaves no context behind
        span = tracing.start_span(
            f"deployment {self._name}.stream", kind=tracing.SpanKind.CLIENT, deployment=self._name
        )
        try:
            with tracing.use_span(span):
                response = self._stream.stream.remote(request)
            async for chunk in response:
                yield chunk
        except Exception as exc:
            span.set_status(tracing.error_status(exc))
            raise
        finally:
            span.end()


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
