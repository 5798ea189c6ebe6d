"""Offline pipeline: embed the knowledge base (and the labelled intent examples the planner compares
against) and write the FAISS index. Cached by a fingerprint of the inputs and the embedding model, so a
second run is instant.

    python -m pipelines.indexing build [--force] [--index-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from models.retrieval.embedder import MiniLMEmbedder
from models.retrieval.index import ArticleIndex, content_hash

from .config import Settings

__all__ = ["load_articles", "provider_name", "load_intent_examples", "build_index", "fingerprint", "INTENT_FILE", "main"]

log = logging.getLogger("switchboard.indexing")
INTENT_FILE = "intents.npz"


def load_articles(path: Path) -> list[dict]:
    data = yaml.safe_load(Path(path).read_text())
    articles = data["articles"] if isinstance(data, dict) else data
    ids = [a["id"] for a in articles]
    if len(ids) != len(set(ids)):
        raise ValueError(f"duplicate article ids in {path}")
    for a in articles:
        missing = {"id", "title", "body"} - a.keys()
        if missing:
            raise ValueError(f"article {a.get('id', '?')} in {path} lacks {sorted(missing)}")
    return articles


def provider_name(path: Path) -> str:
    """The organisation the knowledge base belongs to (its ``provider:`` key), for prompts."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return "our organisation"
    return str(data.get("provider") or "our organisation") if isinstance(data, dict) else "our organisation"


def load_intent_examples(path: Path) -> tuple[list[str], list[str]]:
    data = yaml.safe_load(Path(path).read_text())["intents"]
    texts, labels = [], []
    for intent, spec in data.items():
        for example in spec["examples"]:
            texts.append(example)
            labels.append(intent)
    return texts, labels


def _chunks(article: dict) -> list[str]:
    """Title + one paragraph per chunk, so long articles stay inside the encoder's 256-token window."""
    head = f"{article['title']}. {' '.join(str(t) for t in article.get('tags', []))}".strip()
    paragraphs = [p.strip() for p in article["body"].split("\n\n") if p.strip()] or [article["body"]]
    return [f"{head}\n{p}" for p in paragraphs] + (
        [f"{head}\n{article['reply']}"] if article.get("reply") else []
    )


def fingerprint(settings: Settings, model_name: str) -> str:
    return content_hash(
        Path(settings.kb_path).read_text(), Path(settings.intents_path).read_text(), model_name, "chunks-v3"
    )


def build_index(settings: Settings, *, force: bool = False, embedder: MiniLMEmbedder | None = None) -> Path:
    """Build (or confirm up to date) the KB index and intent prototypes in ``settings.resolved_index_dir``."""
    from tqdm import tqdm

    folder = settings.resolved_index_dir
    embedder = embedder or MiniLMEmbedder(settings.embedding_model_path)
    fp = fingerprint(settings, embedder.name)
    if not force and ArticleIndex.stored_fingerprint(folder) == fp and (folder / INTENT_FILE).exists():
        print(f"knowledge-base index in {folder} is up to date ({fp})", file=sys.stderr)
        return folder

    started = time.perf_counter()
    articles = load_articles(settings.kb_path)
    texts, meta = [], []
    for article in articles:
        for chunk in _chunks(article):
            texts.append(chunk)
            meta.append(
                {
                    "id": article["id"],
                    "title": article["title"],
                    "category": article.get("category", "general"),
                    "reply": article.get("reply", ""),
                    "text": chunk,
                }
            )

    vectors = []
    with tqdm(total=len(texts), desc="embedding KB chunks", unit="chunk", file=sys.stderr) as bar:
        for i in range(0, len(texts), 32):
            vectors.append(embedder.embed_batch(texts[i : i + 32]))
            bar.update(len(texts[i : i + 32]))
    intent_texts, intent_labels = load_intent_examples(settings.intents_path)
    with tqdm(total=len(intent_texts), desc="embedding intent examples", unit="ex", file=sys.stderr) as bar:
        intent_vectors = []
        for i in range(0, len(intent_texts), 64):
            intent_vectors.append(embedder.embed_batch(intent_texts[i : i + 64]))
            bar.update(len(intent_texts[i : i + 64]))

    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / INTENT_FILE, vectors=np.concatenate(intent_vectors), labels=np.asarray(intent_labels))
    ArticleIndex(np.concatenate(vectors), meta, fp).save(folder)  # manifest last: marks the index complete
    (folder / "articles.json").write_text(json.dumps(articles, indent=1))
    print(
        f"indexed {len(articles)} articles ({len(texts)} chunks) and {len(intent_texts)} intent examples "
        f"into {folder} in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.indexing", description="Build the knowledge-base FAISS index."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="embed the KB articles and intent examples (cached by fingerprint)")
    build.add_argument("--force", action="store_true", help="rebuild even if the index is up to date")
    build.add_argument(
        "--index-dir", type=Path, help="where to write the index (default: SWITCHBOARD_INDEX_DIR)"
    )
    args = parser.parse_args(argv)
    settings = Settings()
    if args.index_dir:
        settings = settings.model_copy(update={"index_dir": args.index_dir})
    try:
        build_index(settings, force=args.force)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(
            f"error: {exc}\nCheck SWITCHBOARD_KB_PATH / SWITCHBOARD_INTENTS_PATH and the YAML format.",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
