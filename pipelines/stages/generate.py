"""Assist (generation part): the generated version of a suggestion, streamed after its articles.

The articles suggestion is already with the agent when this starts (``final: false``), so the articles never
wait for the model. The reply is generated from a grounded prompt (redacted conversation, intent, the reranked
articles), streamed as ``assist.delta`` phrases that each pass the guardrail, then checked against the articles.
The final ``assist.suggestion`` (same id) carries one of:

- ``generated``: the reply passed the grounding check (cited article ids, token counts, first-token time);
- ``cache``: generation failed or missed its budget and a grounded reply for a similar question whose cited
  articles are all among today's articles stood in;
- ``articles_only``: the reply was ungrounded, the guardrail could not check it, the session spent its token
  budget, or nothing was cached: the articles suggestion stands (``fallback`` says why).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from models.generation.base import GenerationRequest
from models.generation.grounding import ArticleContext, PromptTemplate, check_grounding, clean_answer

from ..events import AssistDelta, Suggestion
from ..metrics import count_reply_cache, count_suggestion, count_tokens
from ..reply_cache import CachedReply, ReplyCache

if TYPE_CHECKING:
    from models.retrieval.index import Hit

    from ..config import Settings
    from ..ports import GeneratorPort, GuardrailPort
    from ..session import SessionState
    from ..tenants import TenantDirectory
    from .base import Turn

__all__ = ["ReplyWriter"]

log = logging.getLogger("switchboard.pipeline")

Publish = Callable[[object], Awaitable[None]]
_PHRASE_END = re.compile(r"[.!?;:,\n]\s*$")
_MAX_PHRASE_WORDS = 8


class ReplyWriter:
    name = "generate"

    def __init__(
        self,
        generator: GeneratorPort | None,
        guardrail: GuardrailPort,
        settings: Settings,
        prompt: PromptTemplate,
        cache: ReplyCache | None = None,
        provider: str = "our organisation",
    ) -> None:
        self.generator = generator
        self.guardrail = guardrail
        self.settings = settings
        self.prompt = prompt
        self.cache = cache or ReplyCache(settings.generation_cache_size, settings.generation_cache_threshold)
        self.provider = provider
        self.tenants: TenantDirectory | None = None  # per-tenant provider names (set by the pipeline)

    def provider_for(self, state: SessionState) -> str:
        config = self.tenants.get(state.tenant) if self.tenants is not None else None
        return (config.provider if config is not None else None) or self.provider

    def wanted(self, state: SessionState, hits: list[Hit]) -> bool:
        """Whether a generated version follows this turn's articles."""
        return (
            self.generator is not None
            and bool(hits)
            and state.generation_tokens < self.settings.generation_session_token_limit
        )

    def articles(self, hits: list[Hit]) -> list[ArticleContext]:
        return [
            ArticleContext(h.id, h.title, f"{h.text.strip()}\n{h.reply.strip()}".strip(), summary=h.reply)
            for h in hits
        ]

    def request(
        self, turn: Turn, state: SessionState, articles: list[ArticleContext], suggestion_id: str
    ) -> GenerationRequest:
        messages = self.prompt.render(
            articles=articles,
            conversation=list(state.history),
            intent=turn.intent,
            provider=self.provider_for(state),
        )
        return GenerationRequest(
            messages=messages,
            max_tokens=self.settings.generation_max_tokens,
            temperature=0.0,
            request_id=suggestion_id,
        )

    async def write(self, turn: Turn, state: SessionState, first: Suggestion, publish: Publish) -> Suggestion:
        """Generate, stream and check the reply for ``first`` (from ``turn.hits``); publish and return the
        final suggestion."""
        assert self.generator is not None
        articles = self.articles(turn.hits)
        request = self.request(turn, state, articles, first.suggestion_id)
        parts: list[str] = []
        pending = ""
        index = 0
        streaming = True  # off once the guardrail fails on a phrase: unchecked text is never sent
        first_token_at: float | None = None
        last = None
        failure: str | None = None

        async def flush(text: str) -> None:
            nonlocal index, streaming
            if not streaming or not text.strip():
                return
            try:
                redacted = await asyncio.wait_for(self.guardrail.redact(text), self.settings.stage_timeout_s)
            except Exception:
                streaming = False
                return
            await publish(
                AssistDelta(
                    suggestion_id=first.suggestion_id,
                    utterance_id=first.utterance_id,
                    text=redacted.text,
                    index=index,
                )
            )
            index += 1

        try:
            async with asyncio.timeout(self.settings.generation_timeout_s):
                async for chunk in self.generator.stream(request):
                    last = chunk
                    if not chunk.text:
                        continue
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    parts.append(chunk.text)
                    pending += chunk.text
                    if _PHRASE_END.search(pending) or len(pending.split()) > _MAX_PHRASE_WORDS:
                        phrase, pending = pending, ""
                        await flush(phrase)
                await flush(pending)
        except TimeoutError:
            failure = "generation_timeout"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = "generation_error"
            log.warning(
                "generation failed (%s: %s)",
                type(exc).__name__,
                str(exc)[:200],
                extra={"session_id": state.session_id, "utterance_id": turn.utterance_id},
            )

        model = (last.model if last is not None else "") or "generator"
        tokens = None
        if last is not None:
            tokens = {"prompt": last.prompt_tokens, "completion": last.completion_tokens}
            state.generation_tokens += last.prompt_tokens + last.completion_tokens
            count_tokens(model, "prompt", last.prompt_tokens)
            count_tokens(model, "completion", last.completion_tokens)
        common = dict(
            suggestion_id=first.suggestion_id,
            utterance_id=first.utterance_id,
            articles=first.articles,
            reranker=first.reranker,
            final=True,
            tokens=tokens,
            prompt_version=self.prompt.version,
            first_token_ms=round((first_token_at - turn.received_at) * 1000.0, 2) if first_token_at else None,
        )

        def latency() -> float:
            return round((time.perf_counter() - turn.received_at) * 1000.0, 2)

        if failure is not None:
            cached = self.lookup(turn, first, state.tenant)
            if cached is not None:
                final = Suggestion(
                    **common,
                    text=cached.text,
                    source="cache",
                    latency_ms=latency(),
                    fallback=failure,
                    model=cached.model,
                    citations=list(cached.citations),
                )
            else:
                final = self._articles_only(first, common, latency(), failure)
        else:
            truncated = last is not None and last.finish_reason == "length"
            text, report = check_grounding(
                clean_answer("".join(parts), truncated=truncated),
                articles,
                min_support=self.settings.grounding_min_support,
                question=f"{turn.redacted} {self.provider_for(state)}",  # the provider's name is not a fact
            )
            grounding = {"grounded": report.grounded, "support": report.support}
            if report.reason:
                grounding["reason"] = report.reason
            if not report.grounded:
                final = self._articles_only(
                    first, {**common, "grounding": grounding, "model": model}, latency(), "ungrounded"
                )
            else:
                try:
                    checked = await asyncio.wait_for(
                        self.guardrail.redact(text), self.settings.stage_timeout_s
                    )
                except Exception:
                    final = self._articles_only(
                        first, {**common, "model": model}, latency(), "pii_check_failed"
                    )
                else:
                    final = Suggestion(
                        **common,
                        text=checked.text,
                        source="generated",
                        latency_ms=latency(),
                        model=model,
                        citations=report.citations,
                        grounding=grounding,
                    )
                    if turn.vector is not None:
                        self.cache.put(
                            turn.vector,
                            CachedReply(checked.text, tuple(report.citations), model, tenant=state.tenant),
                        )
        count_suggestion(final.source, final.model or "none", final.fallback)
        await publish(final)
        return final

    def lookup(self, turn: Turn, first: Suggestion, tenant: str) -> CachedReply | None:
        if turn.vector is None:
            return None
        cached = self.cache.get(turn.vector, [a.id for a in first.articles], tenant)
        count_reply_cache(cached is not None)
        return cached

    @staticmethod
    def _articles_only(first: Suggestion, common: dict, latency_ms: float, reason: str) -> Suggestion:
        return Suggestion(
            **common,
            text=first.text,
            source="articles_only",
            latency_ms=latency_ms,
            fallback=reason,
        )
