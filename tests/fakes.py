"""Fakes that implement the real model ports (no mocks): each can delay, fail, or count calls."""

from __future__ import annotations

import asyncio
from typing import Any


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
