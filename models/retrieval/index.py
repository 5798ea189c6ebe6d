"""A FAISS inner-product index over normalised article embeddings, saved with a manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Hit", "ArticleIndex", "IndexMissingError", "content_hash"]


class IndexMissingError(FileNotFoundError):
    pass


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    title: str
    score: float
    reply: str
    text: str = ""  # the article's best-matching chunk (title, tags, one paragraph): what a reranker reads


def content_hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


class ArticleIndex:
    """Exact inner-product search (articles are few; IVF/HNSW or faiss-gpu take over at scale)."""

    MANIFEST = "manifest.json"
    VECTORS = "articles.faiss"

    def __init__(self, vectors: np.ndarray, meta: list[dict], fingerprint: str = "") -> None:
        import faiss

        if len(meta) != vectors.shape[0]:
            raise ValueError("one metadata row per vector is required")
        self.meta = meta
        self._by_id = {m["id"]: m for m in meta}
        self.fingerprint = fingerprint
        self.dim = int(vectors.shape[1])
        self._index = faiss.IndexFlatIP(self.dim)
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.meta)

    def search_batch(
        self, queries: np.ndarray, k: int, prefer: list[str | None] | None = None, boost: float = 0.08
    ) -> list[list[Hit]]:
        """Top-k articles per query. Rows may be chunks of one article: an article counts once, at the score
        of its best chunk. ``prefer[i]`` names a category (the planner's intent) whose articles get ``boost``."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, ids = self._index.search(queries, min(max(k * 8, 24), len(self.meta)))
        results = []
        for row, (row_scores, row_ids) in enumerate(zip(scores, ids, strict=True)):
            category = prefer[row] if prefer else None
            best: dict[str, tuple[float, int]] = {}  # article id -> (score, row of its best chunk)
            for s, i in zip(row_scores, row_ids, strict=True):
                if i < 0:
                    continue
                m = self.meta[i]
                score = float(s) + (boost if category and m.get("category") == category else 0.0)
                if score > best.get(m["id"], (-1.0, -1))[0]:
                    best[m["id"]] = (score, int(i))
            top = sorted(best.items(), key=lambda kv: kv[1][0], reverse=True)[:k]
            results.append(
                [
                    Hit(
                        id=a,
                        title=self._by_id[a]["title"],
                        score=round(s, 4),
                        reply=self._by_id[a].get("reply", ""),
                        text=self.meta[i].get("text", ""),
                    )
                    for a, (s, i) in top
                ]
            )
        return results

    def save(self, folder: Path) -> None:
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(folder / self.VECTORS))
        manifest = {"fingerprint": self.fingerprint, "dim": self.dim, "articles": self.meta}
        tmp = folder / (self.MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(folder / self.MANIFEST)  # the manifest lands last: its presence means a complete index

    @classmethod
    def load(cls, folder: Path) -> ArticleIndex:
        import faiss

        manifest_path = folder / cls.MANIFEST
        if not manifest_path.exists():
            raise IndexMissingError(
                f"no knowledge-base index in {folder}: build it with `python -m pipelines.indexing build` "
                "(make demo/serve/test do this for you)"
            )
        manifest = json.loads(manifest_path.read_text())
        index = faiss.read_index(str(folder / cls.VECTORS))
        vectors = index.reconstruct_n(0, index.ntotal)
        return cls(vectors, manifest["articles"], manifest.get("fingerprint", ""))

    @staticmethod
    def stored_fingerprint(folder: Path) -> str | None:
        try:
            return json.loads((folder / ArticleIndex.MANIFEST).read_text()).get("fingerprint")
        except (FileNotFoundError, json.JSONDecodeError):
            return None
