"""Assist (retrieval part): search the knowledge base with the turn's embedding and suggest the top
article's reply with the articles behind it. When search fails, the most recent good articles for the same
intent (or any intent) are served from a small in-process cache, marked ``fallback: cached_articles``; when it
misses the assist budget (500 ms by default) they are served at once too (``fallback: assist_budget``).
The generated reply (``generate.ReplyWriter``) follows these articles; it never delays them."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from ..events import Article, Suggestion, new_id
from .base import Stage, Turn

if TYPE_CHECKING:
    from models.retrieval.index import Hit

    from ..ports import EmbedderPort, RetrieverPort
    from ..session import SessionState
    from ..tenants import TenantDirectory

__all__ = ["AssistStage"]


class AssistStage(Stage):
    name = "assist"

    def __init__(
        self,
        embedder: EmbedderPort,
        retriever: RetrieverPort,
        top_k: int = 3,
        timeout_s: float = 5.0,
        budget_s: float | None = None,
        tenants: TenantDirectory | None = None,
    ) -> None:
        super().__init__(timeout_s)
        self.budget_s = budget_s
        self.embedder = embedder
        self.retriever = retriever
        self.top_k = top_k
        self.tenants = tenants  # per-tenant knowledge base (article globs)
        # (tenant, intent) -> last good hits: one tenant is never served another's cached articles
        self._recent: OrderedDict[tuple[str, str], list[Hit]] = OrderedDict()

    def _suggestion(
        self,
        turn: Turn,
        state: SessionState,
        hits: list[Hit],
        fallback: str | None = None,
        reranker: str | None = None,
    ) -> list:
        suggestion_id = new_id("sug")
        state.suggestions.add(suggestion_id)
        turn.hits = list(hits)
        return [
            Suggestion(
                suggestion_id=suggestion_id,
                utterance_id=turn.utterance_id,
                text=hits[0].reply if hits else "",
                articles=[Article(id=h.id, title=h.title, score=h.score) for h in hits],
                source="articles_only",
                latency_ms=round((time.perf_counter() - turn.received_at) * 1000.0, 2),
                fallback=fallback,
                reranker=reranker,
            )
        ]

    async def process(self, turn: Turn, state: SessionState) -> list:
        recent = self._recent.get((state.tenant, turn.intent or "other"))  # same intent only: stale but on topic
        if self.budget_s is None or recent is None:  # nothing to serve early: wait for the search
            return await self._search(turn, state)
        search = asyncio.ensure_future(self._search(turn, state))
        done, _ = await asyncio.wait({search}, timeout=self.budget_s)
        if not done:  # over budget: the agent gets the last good articles now, not the late ones
            search.cancel()
            return self._suggestion(turn, state, recent, fallback="assist_budget")
        return search.result()

    async def _search(self, turn: Turn, state: SessionState) -> list:
        if turn.vector is None:
            turn.vector = await self.embedder.embed(turn.redacted)
        config = self.tenants.get(state.tenant) if self.tenants is not None else None
        scoped = config is not None and config.kb_articles is not None
        k = self.top_k * 4 if scoped else self.top_k  # room to keep top_k of the tenant's own articles
        result = await self.retriever.search(turn.vector, k, turn.intent, turn.redacted, state.variant)
        hits = [h for h in result.hits if config.allows_article(h.id)][: self.top_k] if scoped else result.hits
        turn.predictions["assist"] = result
        if hits:
            key = (state.tenant, turn.intent or "other")
            self._recent[key] = hits
            self._recent.move_to_end(key)
            while len(self._recent) > 64:
                self._recent.popitem(last=False)
        return self._suggestion(turn, state, hits, reranker=result.reranker)

    async def fallback(self, turn: Turn, state: SessionState, error: BaseException) -> list:
        hits = self._recent.get((state.tenant, turn.intent or "other"))
        if hits is None:  # any intent, but only this tenant's
            hits = next((h for (t, _), h in reversed(self._recent.items()) if t == state.tenant), None)
        if hits is None:
            raise error
        return self._suggestion(turn, state, hits, fallback="cached_articles")
