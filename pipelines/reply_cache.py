"""The semantic cache of grounded replies: when generation fails or misses its budget, a reply generated for a
similar earlier question stands in, provided every article it cites is among the articles retrieved now (so a
cached reply is as grounded as a fresh one would be). Keyed by the question's embedding; per ingress replica,
bounded, least recently used out. Lookups and hits are counted (``hit_rate``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CachedReply", "ReplyCache"]


@dataclass(frozen=True)
class CachedReply:
    text: str
    citations: tuple[str, ...]
    model: str
    similarity: float = 1.0
    tenant: str = ""  # a reply is only ever served again to the tenant it was written for


class ReplyCache:
    def __init__(self, capacity: int = 1024, threshold: float = 0.9) -> None:
        self.capacity = capacity
        self.threshold = threshold
        self._entries: OrderedDict[int, tuple[np.ndarray, CachedReply]] = OrderedDict()
        self._next = 0
        self._lock = threading.Lock()
        self.lookups = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def put(self, vector: np.ndarray, reply: CachedReply) -> None:
        if self.capacity <= 0 or not reply.citations:
            return
        unit = np.asarray(vector, dtype=np.float32)
        unit = unit / (np.linalg.norm(unit) or 1.0)
        with self._lock:
            self._entries[self._next] = (unit, reply)
            self._next += 1
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def get(self, vector: np.ndarray, article_ids: Sequence[str], tenant: str = "") -> CachedReply | None:
        """The most similar cached reply of ``tenant`` at or above the threshold whose citations are all in
        ``article_ids``; None otherwise. Counts the lookup."""
        query = np.asarray(vector, dtype=np.float32)
        query = query / (np.linalg.norm(query) or 1.0)
        allowed = set(article_ids)
        with self._lock:
            self.lookups += 1
            if not self._entries:
                return None
            keys = list(self._entries)
            matrix = np.stack([self._entries[k][0] for k in keys])
            scores = matrix @ query
            for i in np.argsort(-scores):
                score = float(scores[i])
                if score < self.threshold:
                    return None
                reply = self._entries[keys[i]][1]
                if reply.tenant == tenant and set(reply.citations) <= allowed:
                    self._entries.move_to_end(keys[i])
                    self.hits += 1
                    return CachedReply(reply.text, reply.citations, reply.model, round(score, 4), tenant)
        return None

    def stats(self) -> dict[str, float]:
        return {
            "entries": len(self),
            "lookups": self.lookups,
            "hits": self.hits,
            "hit_rate": round(self.hit_rate, 4),
        }
