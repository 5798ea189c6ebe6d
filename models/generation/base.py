"""The generation interface every backend implements: a chat request in, a stream of text deltas out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["GenerationRequest", "GenerationChunk", "Generator", "GenerationError", "collect"]


class GenerationError(RuntimeError):
    """The backend failed to produce text (engine dead, server unreachable, bad response)."""


@dataclass(frozen=True)
class GenerationRequest:
    """``messages`` are chat turns (``{"role": "system"|"user"|"assistant", "content": ...}``), already
    redacted by the caller; the backend applies the model's chat template."""

    messages: tuple[dict[str, str], ...]
    max_tokens: int = 96
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    request_id: str | None = None


@dataclass
class GenerationChunk:
    """One streamed piece. ``text`` is the delta since the previous chunk; the last chunk has ``finished``
    set with the token counts and why generation stopped."""

    text: str
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """``name`` labels what is served (``response_generator@3``, a folder name, a server's model id)."""

    name: str

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...

    async def close(self) -> None: ...


async def collect(generator: Generator, request: GenerationRequest) -> tuple[str, GenerationChunk]:
    """Run a request to the end: (full text, last chunk)."""
    parts: list[str] = []
    last = GenerationChunk(text="", finished=True)
    async for chunk in generator.stream(request):
        parts.append(chunk.text)
        last = chunk
    return "".join(parts), last
