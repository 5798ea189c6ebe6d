"""The knowledge-base reranker: training-pair generation, a real small training run, reranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.retrieval.index import ArticleIndex, Hit
from pipelines.config import Settings
from pipelines.indexing import load_articles
from pipelines.training import reranker as training

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def kb(index_dir: Path):
    from models.retrieval.embedder import MiniLMEmbedder

    settings = Settings(data_dir=index_dir.parent, index_dir=index_dir)
    return settings, ArticleIndex.load(index_dir), MiniLMEmbedder(), load_articles(settings.kb_path)


@pytest.fixture(scope="module")
def trained(small_reranker):
    """One small but real training run (tests/conftest.py: once per test session)."""
    return small_reranker


def _words(text: str) -> set[str]:
    return {w for w in "".join(c if c.isalnum() else " " for c in text.lower()).split() if len(w) >= 4}


def test_index_hits_carry_their_best_chunk(kb):
    _, index, embedder, articles = kb
    by_id = {a["id"]: a for a in articles}
    hits = index.search_batch(embedder.embed_batch(["I was charged twice, when do I get my refund"]), 5)[0]
    assert hits and all(h.text for h in hits)
    for h in hits:  # the chunk belongs to the hit's article: its title heads it
        assert h.text.startswith(by_id[h.id]["title"])


def test_generated_queries_point_at_their_article(kb):
    _, _, _, articles = kb
    queries = training.generate_queries(articles)
    by_id = {a["id"]: a for a in articles}
    assert len(queries) > 500 and {q.source for q in queries} == {"title", "tag", "fact"}
    assert {q.article_id for q in queries} == set(by_id)
    # title/tag questions share words with their own article's title and tags (typos may break one word)
    checked = [q for q in queries if q.source in ("title", "tag")]
    own = [
        bool(_words(q.text) & _words(f"{by_id[q.article_id]['title']} {by_id[q.article_id]['tags']}"))
        for q in checked
    ]
    assert sum(own) / len(own) > 0.9
    # fact questions share words with their own article's body or reply, far more than with a random other one
    facts = [q for q in queries if q.source == "fact"]
    body = lambda a: _words(f"{a['body']} {a.get('reply', '')}")  # noqa: E731
    hits = [bool(_words(q.text) & body(by_id[q.article_id])) for q in facts]
    assert sum(hits) / len(hits) > 0.95


def test_groups_pair_gold_chunks_with_other_articles(kb):
    settings, index, embedder, articles = kb
    queries = training.generate_queries(articles)[:40]
    groups = training.build_groups(queries, index, embedder, candidates=10, negatives=3, hard_negatives=2)
    chunks: dict[str, set[str]] = {}
    for m in index.meta:
        chunks.setdefault(m["id"], set()).add(m["text"])
    assert len(groups) == len(queries)
    for g in groups:
        assert g.positive in chunks[g.article_id]
        assert len(g.negatives) == 3 and g.article_id not in g.negative_ids
        assert all(n in chunks[i] for n, i in zip(g.negatives, g.negative_ids, strict=True))
    # the first negatives are hard: they come from FAISS's top candidates for the query
    top = index.search_batch(embedder.embed_batch([g.query for g in groups]), 10)
    assert all(g.negative_ids[0] in {h.id for h in row} for g, row in zip(groups, top, strict=True))


def test_eval_questions_never_reach_training(kb, monkeypatch: pytest.MonkeyPatch):
    settings, index, embedder, articles = kb
    real_read_text = Path.read_text

    def guarded(self: Path, *args, **kwargs):
        assert self.resolve() != training.EVAL_FILE.resolve(), "the training-pair generator read the eval set"
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", guarded)
    queries = training.generate_queries(articles) + training.intent_queries(
        settings.intents_path, articles, index, embedder
    )
    monkeypatch.undo()
    held_out = training.load_eval_queries()
    assert len(held_out) >= 60
    train_texts = {training._normalise(q.text) for q in queries}
    leaked = [i["query"] for i in held_out if training._normalise(i["query"]) in train_texts]
    assert not leaked, leaked


def test_small_training_run_produces_a_loadable_reranker(trained):
    from models.retrieval.reranker import CrossEncoderReranker

    manifest = training.read_manifest(trained.folder) if hasattr(training, "read_manifest") else None
    reranker = CrossEncoderReranker(trained.folder, name="kb_reranker@test")
    assert reranker.manifest["kind"] == "cross_encoder" and (
        manifest is None or manifest == reranker.manifest
    )
    assert trained.name == "kb_reranker"
    assert trained.metrics["faiss_weight"] in training.FAISS_WEIGHTS
    assert reranker.faiss_weight == trained.metrics["faiss_weight"]
    for key in ("recall_at_3_faiss", "recall_at_3_reranked", "recall_at_1_reranked", "mrr_at_10_reranked"):
        assert 0.0 <= trained.metrics[key] <= 1.0
    report = trained.reports["evaluation.json"]
    assert len(report["queries"]) == trained.metrics["eval_queries"] >= 60
    assert {"rank_faiss", "rank_reranked", "top3_reranked"} <= report["queries"][0].keys()


def test_rerank_batch_keeps_k_best_sorted(trained, kb):
    from models.retrieval.reranker import CrossEncoderReranker

    _, index, embedder, _ = kb
    reranker = CrossEncoderReranker(trained.folder)
    queries = ["can I get my prescription sent to a different pharmacy", "my portal account is locked"]
    candidates = index.search_batch(embedder.embed_batch(queries), 10)
    reranked = reranker.rerank_batch(queries, candidates, 3)
    assert len(reranked) == 2
    for before, after in zip(candidates, reranked, strict=True):
        assert len(after) == 3
        scores = [h.score for h in after]
        assert scores == sorted(scores, reverse=True)
        originals = {h.id: h for h in before}
        for h in after:  # same article, same title/reply/text, the reranker's score
            assert h.id in originals and h.text == originals[h.id].text and h.reply == originals[h.id].reply
        faiss = np.array([originals[h.id].score for h in after], dtype=np.float32)
        expected = reranker.score(queries[reranked.index(after)], [h.text for h in after])
        np.testing.assert_allclose(scores, expected + reranker.faiss_weight * faiss, atol=2e-3)
    assert reranker.rerank_batch(["x"], [[Hit("a", "A", 0.5, "r", "t")]], 5)[0][0].id == "a"
    assert reranker.rerank_batch([], [], 3) == []


def test_small_training_learns_something(trained, kb):
    """The small run is short (~80 steps): a fresh head only starts to separate positives from negatives, so
    this checks direction, not quality (the full-size run's numbers are in its evaluation report). The training
    loss must fall, and for training-style questions the positive must come first among 4 passages at least as
    often as chance; a head that did not learn, or learnt the wrong way round (seen: 8 of 60), fails."""
    from models.retrieval.reranker import CrossEncoderReranker

    _, index, embedder, articles = kb
    assert trained.metrics["loss_last"] < trained.metrics["loss_first"] - 0.03, trained.metrics
    reranker = CrossEncoderReranker(trained.folder)
    queries = training.generate_queries(articles, seed=7)[::9][:60]
    groups = training.build_groups(
        queries, index, embedder, candidates=10, negatives=3, hard_negatives=0, seed=7
    )
    wins = [int(np.argmax(reranker.score(g.query, [g.positive, *g.negatives]))) == 0 for g in groups]
    assert sum(wins) / len(wins) >= 0.25, f"positive ranked first for {sum(wins)}/{len(wins)} groups"
