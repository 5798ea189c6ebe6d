"""Fakes that implement the real model ports (no mocks): each can delay, fail, or count calls."""

from __future__ import annotations

import asyncio
from typing import Any


class Recorder:
    """An ``emit`` sink: keeps every event's wire form."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    async def __call__(self, event: Any) -> None:
        self.events.append(event.wire())

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type_]


class Failing:
    """Wraps a real port; while ``error`` is set, every call raises it (optionally after ``delay``)."""

    def __init__(self, inner: Any, error: BaseException | None = None, delay: float = 0.0) -> None:
        self.inner = inner
        self.error = error
        self.delay = delay
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any) -> Any:
            self.calls += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.error is not None:
                raise self.error
            return await getattr(self.inner, name)(*args)

        return call


class FaultyGenerator:
    """Wraps a real generator (``stream``) and injects one fault while ``fault`` is set:
    ``raise`` (GenerationError after ``after`` chunks), ``hang`` (stops yielding after ``after`` chunks, as a
    wedged engine does). ``fault=None`` passes everything through."""

    def __init__(self, inner: Any, fault: str | None = None, after: int = 1) -> None:
        self.inner = inner
        self.fault = fault
        self.after = after
        self.calls = 0

    async def stream(self, request: Any) -> Any:
        from models.generation.base import GenerationError

        self.calls += 1
        n = 0
        async for chunk in self.inner.stream(request):
            if self.fault is not None and n >= self.after:
                if self.fault == "raise":
                    raise GenerationError("injected: engine died mid-reply")
                await asyncio.Event().wait()  # hang until the caller's budget cancels us
            n += 1
            yield chunk


class ScriptedGenerator:
    """A generator port that streams a fixed text word by word, in the real chunk format: for the cases a real
    small model does not produce on demand (an invented fact, personal data in the output)."""

    def __init__(self, text: str, name: str = "scripted@1") -> None:
        self.text = text
        self.name = name

    async def stream(self, request: Any) -> Any:
        from models.generation.base import GenerationChunk

        words = self.text.split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            yield GenerationChunk(
                text=word + ("" if last else " "),
                finished=last,
                finish_reason="stop" if last else None,
                prompt_tokens=100,
                completion_tokens=i + 1,
                model=self.name,
            )
            await asyncio.sleep(0)
