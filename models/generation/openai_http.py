"""An existing OpenAI-compatible chat server (``vllm serve``, TGI, llama.cpp server, ...) over HTTP.

Speaks ``POST {base_url}/chat/completions`` with ``stream: true`` and ``stream_options.include_usage`` and reads
the server-sent events: each ``data:`` line carries ``choices[0].delta.content`` (and ``finish_reason`` on the
last choice chunk), a final chunk carries ``usage``, then ``data: [DONE]``. The server applies the chat
template. When no ``model`` is given, the first id of ``GET {base_url}/models`` is used (looked up once).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .base import GenerationChunk, GenerationError, GenerationRequest

__all__ = ["OpenAIChatGenerator"]

log = logging.getLogger(__name__)


class OpenAIChatGenerator:
    """``base_url`` is the API root, e.g. ``http://127.0.0.1:8000/v1``. ``api_key`` is sent as a bearer token
    (``vllm serve --api-key``). ``timeout_s`` bounds connecting and the wait for each streamed piece."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or model or self.base_url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self._model_lock = asyncio.Lock()

    async def _model_id(self) -> str:
        if self.model is not None:
            return self.model
        async with self._model_lock:
            if self.model is None:
                url = f"{self.base_url}/models"
                try:
                    response = await self._client.get("/models")
                    response.raise_for_status()
                    ids = [entry["id"] for entry in response.json().get("data", [])]
                except httpx.HTTPError as exc:
                    raise GenerationError(_http_problem(url, exc)) from exc
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise GenerationError(f"GET {url} did not return an OpenAI model list: {exc!r}") from exc
                if not ids:
                    raise GenerationError(f"GET {url} lists no models; pass model= explicitly")
                self.model = ids[0]
                if self.name == self.base_url:
                    self.name = self.model
                log.info("%s serves %s", self.base_url, self.model)
        return self.model

    def _body(self, model: str, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": list(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        model = await self._model_id()
        url = f"{self.base_url}/chat/completions"
        headers = {"X-Request-Id": request.request_id} if request.request_id else None
        finish_reason: str | None = None
        usage: dict[str, int] = {}
        completion_pieces = 0
        saw_done = False
        try:
            async with self._client.stream(
                "POST", "/chat/completions", json=self._body(model, request), headers=headers
            ) as response:
                if response.status_code >= 400:
                    detail = (await response.aread()).decode(errors="replace")[:500]
                    raise GenerationError(
                        f"POST {url} answered HTTP {response.status_code}: {detail} "
                        f"(check the model name {model!r} and the request limits)"
                    )
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, "event:" lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        saw_done = True
                        break
                    event = _parse_event(url, data)
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        if choice.get("index", 0) != 0:
                            continue
                        text = (choice.get("delta") or {}).get("content") or ""
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
                        if text:
                            completion_pieces += 1
                            yield GenerationChunk(text=text, model=model)
        except httpx.HTTPError as exc:
            raise GenerationError(_http_problem(url, exc)) from exc
        if not saw_done and finish_reason is None:
            raise GenerationError(f"the stream from {url} ended before a finish reason or [DONE]")
        yield GenerationChunk(
            text="",
            finished=True,
            finish_reason=finish_reason or "stop",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            # without usage (a server that ignores include_usage) the piece count is a lower bound
            completion_tokens=int(usage.get("completion_tokens", completion_pieces)),
            model=model,
        )

    async def close(self) -> None:
        await self._client.aclose()


def _parse_event(url: str, data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except json.JSONDecodeError as exc:
        raise GenerationError(f"{url} sent a stream line that is not JSON: {data[:200]!r}") from exc
    if not isinstance(event, dict):
        raise GenerationError(f"{url} sent a stream event that is not an object: {data[:200]!r}")
    if "error" in event:  # some servers report mid-stream failures as an event
        raise GenerationError(f"{url} reported an error mid-stream: {event['error']}")
    return event


def _http_problem(url: str, exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return (
            f"cannot connect to {url}: {exc or type(exc).__name__}; check that the server is running "
            "(e.g. `vllm serve MODEL --port PORT`) and that base_url includes the /v1 prefix"
        )
    if isinstance(exc, httpx.TimeoutException):
        return (
            f"{url} timed out ({type(exc).__name__}); the server may be overloaded or still loading the model"
        )
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        hint = " (check base_url: it should end in /v1)" if status == 404 else ""
        hint = " (check api_key)" if status in (401, 403) else hint
        return f"{url} answered HTTP {status}{hint}: {exc.response.text[:300]}"
    return f"request to {url} failed: {type(exc).__name__}: {exc}"
