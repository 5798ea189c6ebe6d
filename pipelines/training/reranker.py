"""Train the knowledge-base reranker (``kb_reranker``): a cross-encoder over (customer question, article chunk).

    python -m pipelines.training.reranker [--small] [--out DIR] [--no-register] [--alias auto] [--semver X.Y.Z]

Training pairs are generated from the knowledge base itself (``articles.yaml``) and the labelled intent
examples (``intents.yaml``) — nothing else:

- *title* and *tag* questions: templated customer phrasings around each article's title and its tags (tags that
  several articles share are skipped: they do not say which article is right);
- *fact* questions: a short span of one sentence of the article's body or reply, phrased as a question ("two
  missed payments in a row cancel the plan?") — what callers ask about the details an article answers;
- *intent* examples: each example utterance of an intent is matched, by the current FAISS retriever, to the best
  article of that intent's category (kept only when it clearly beats the category's runner-up);
- every query gets caller noise at random: greetings and fillers, lower case without punctuation, a typo.

For each query the FAISS retriever (the serving path: ``ArticleIndex.search_batch``) returns the top
``rerank_candidates`` articles with their best chunk; the gold article's chunk is the positive and the other
candidates are the hard negatives. The cross-encoder starts from the packaged all-MiniLM-L6-v2 with a fresh
one-logit head and is trained with a listwise softmax loss (one positive against its negatives), AdamW and a
linear warm-up/decay schedule. A reranked hit's score is the cross-encoder's logit plus ``faiss_weight`` x the
FAISS cosine; the weight is chosen on a development set of *generated* questions (other seeds, none used in
training) by MRR@10 — never on the evaluation file.

Evaluation uses ``kb/retrieval_eval.yaml``, questions written by hand for this purpose that the generator never
reads: recall@1, recall@3 and MRR@10 of FAISS alone versus FAISS's top ``rerank_candidates`` reranked.
"""

from __future__ import annotations

import logging
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from models.retrieval.embedder import MiniLMEmbedder, packaged_minilm_path
from models.retrieval.index import ArticleIndex, Hit

from ..config import PACKAGE_DIR, Settings
from ..indexing import build_index, load_articles
from .common import TrainedModel, write_manifest
from .finetune import run_training_cli, torch_threads

__all__ = [
    "EVAL_FILE",
    "RerankerConfig",
    "TrainingQuery",
    "TrainingGroup",
    "generate_queries",
    "intent_queries",
    "build_groups",
    "load_eval_queries",
    "evaluate_retrieval",
    "format_evaluation",
    "train_reranker",
    "main",
]

log = logging.getLogger("switchboard.training.reranker")

NAME = "kb_reranker"
EVAL_FILE = PACKAGE_DIR / "kb" / "retrieval_eval.yaml"  # held out: the query generator never reads it


@dataclass(frozen=True)
class RerankerConfig:
    max_queries: int | None = 800  # generated training queries used (a random sample; None: all of them)
    negatives: int = 3  # negatives per query
    hard_negatives: int = 1  # of which from FAISS's top candidates; the rest are random other articles, which
    # give the fresh head a signal it can pick up in a few hundred CPU steps (hard-only did not move the loss)
    epochs: int = 1
    batch_queries: int = 4  # queries per optimiser step (each with 1 + negatives passages)
    learning_rate: float = 8e-5
    head_learning_rate: float = 2e-3  # the fresh head (pooler + one-logit classifier) learns faster
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    layers: int | None = 4  # keep the first N of MiniLM's 6 layers: 1.5x cheaper to train and to serve
    max_length: int = 128  # KB chunks are <= ~140 tokens: the tail of the longest few is cut
    random_chunk_rate: float = 0.25  # share of positives shown as another chunk of the gold article
    intent_margin: float = 0.02  # an intent example's best in-category article must beat the next by this
    dev_queries: int = 100  # generated questions (not trained on) that choose faiss_weight
    threads: int | None = 1  # torch threads for this (training) process (None: idle_cores()); 1 holds up best
    # on a shared machine
    seed: int = 0


FULL = RerankerConfig()
# small (tests): fewer, shorter pairs and random negatives only; ~80 CPU steps just get the loss moving
SMALL = RerankerConfig(
    max_queries=320,
    hard_negatives=0,
    max_length=96,
    dev_queries=20,
)
FAISS_WEIGHTS = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0)


@dataclass(frozen=True)
class TrainingQuery:
    text: str
    article_id: str
    source: str  # title, tag, fact, intent


@dataclass(frozen=True)
class TrainingGroup:
    query: str
    article_id: str
    positive: str  # passage of the gold article
    negatives: tuple[str, ...]  # passages of other articles, hardest (FAISS-highest) first
    negative_ids: tuple[str, ...]


# ---------------------------------------------------------------- query generation

_TITLE_TEMPLATES = [
    "{t}",
    "question about {t}",
    "hi, I need some help with {t}",
    "can you tell me about {t}",
    "info on {t} please",
    "I was told to call about {t}",
]
_TAG_TEMPLATES = [
    "{t}",
    "I have a question about {t}",
    "how does {t} work",
    "can you help me with {t}",
    "what's the deal with {t}",
    "who do I talk to about {t}",
    "need help w/ {t}",
    "how long does {t} take",
    "is there a fee for {t}",
    "calling about {t} for my mom",
    "what do I do about {t}",
    "where do I find {t} in the portal",
]
_FACT_TEMPLATES = [
    "{t}?",
    "is it true that {t}",
    "quick question, {t}?",
    "so {t}?",
    "{t}, right?",
    "wait {t}?",
]
_PREFIXES = ["hi ", "hello, ", "hey so ", "um ", "yeah hi, ", "good morning, ", "ok so ", "quick question: "]
_SUFFIXES = [" thanks", " please", " ??", " asap", " thank you", " can you help", " lol", "..."]
_STOP = set(
    "a an the and or but if of to in on at for with by from as is are was were be been this that these those it its "
    "your you we our us they their them i my me can will would should may might must do does did so than then "
    "also any all each which who what when where how there here not no only just".split()
)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.replace("\n", " ")) if len(s.split()) >= 5]


def _fact_span(sentence: str, rng: random.Random) -> str | None:
    """A 4–9 word span of ``sentence`` starting and ending on content words, lower-cased."""
    words = re.sub(r"[\"“”()]", "", sentence).rstrip(".!?").split()
    if len(words) < 4:
        return None
    for _ in range(6):
        size = rng.randint(4, min(9, len(words)))
        start = rng.randint(0, len(words) - size)
        span = words[start : start + size]
        while span and span[0].lower().strip(",;:") in _STOP:
            span = span[1:]
        while span and span[-1].lower().strip(",;:") in _STOP:
            span = span[:-1]
        if len(span) >= 3:
            return " ".join(span).strip(",;: ").lower()
    return None


def _typo(text: str, rng: random.Random) -> str:
    words = text.split()
    long = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not long:
        return text
    i = rng.choice(long)
    w = words[i]
    j = rng.randint(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :] if rng.random() < 0.5 else w[:j] + w[j + 1 :]
    return " ".join(words)


def add_noise(text: str, rng: random.Random) -> str:
    """Caller noise: fillers and greetings, lower case without punctuation, a typo (each at random)."""
    if rng.random() < 0.35:
        text = rng.choice(_PREFIXES) + text[:1].lower() + text[1:]
    if rng.random() < 0.25:
        text = text.rstrip("?.!") + rng.choice(_SUFFIXES)
    if rng.random() < 0.4:
        text = re.sub(r"[^\w\s$'-]", "", text.lower())
    if rng.random() < 0.3:
        text = _typo(text, rng)
    return re.sub(r"\s+", " ", text).strip()


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9$ ]", "", text.lower()).strip()


def generate_queries(articles: Sequence[dict], *, seed: int = 0) -> list[TrainingQuery]:
    """Title, tag and fact questions for every article (deterministic for a seed), de-duplicated."""
    rng = random.Random(seed)
    tag_owners = Counter(
        str(t).lower() for a in articles for t in {str(t).lower() for t in a.get("tags", [])}
    )
    out: list[TrainingQuery] = []
    for article in articles:
        aid = article["id"]
        title = str(article["title"]).rstrip("?").strip()
        lowered = title[:1].lower() + title[1:]
        for template in rng.sample(_TITLE_TEMPLATES, 3):
            out.append(TrainingQuery(template.format(t=lowered), aid, "title"))
        if article["title"].endswith("?"):
            out.append(TrainingQuery(article["title"], aid, "title"))
        for tag in article.get("tags", []):
            tag = str(tag)
            if tag_owners[tag.lower()] > 1:
                continue  # shared by several articles: not evidence for this one
            for template in rng.sample(_TAG_TEMPLATES, 2):
                out.append(TrainingQuery(template.format(t=tag), aid, "tag"))
        facts = _sentences(str(article["body"])) + _sentences(str(article.get("reply", "")))
        for sentence in facts:
            span = _fact_span(sentence, rng)
            if span:
                out.append(TrainingQuery(rng.choice(_FACT_TEMPLATES).format(t=span), aid, "fact"))
    noisy = [TrainingQuery(add_noise(q.text, rng), q.article_id, q.source) for q in out]
    return _dedupe(noisy)


def _dedupe(queries: Sequence[TrainingQuery]) -> list[TrainingQuery]:
    seen: set[str] = set()
    unique = []
    for q in queries:
        key = _normalise(q.text)
        if key and key not in seen:
            seen.add(key)
            unique.append(q)
    return unique


def intent_queries(
    intents_path: Path,
    articles: Sequence[dict],
    index: ArticleIndex,
    embedder: MiniLMEmbedder,
    *,
    margin: float = 0.02,
    seed: int = 0,
) -> list[TrainingQuery]:
    """The intent examples whose category has articles, each labelled with the article of that category FAISS
    ranks first — kept only when it beats the category's runner-up by ``margin``."""
    rng = random.Random(seed + 1)
    spec = yaml.safe_load(Path(intents_path).read_text())["intents"]
    categories = {a.get("category", "general") for a in articles}
    category_of = {a["id"]: a.get("category", "general") for a in articles}
    texts, labels = [], []
    for intent, body in spec.items():
        if intent in categories:
            for example in body["examples"]:
                texts.append(str(example))
                labels.append(intent)
    if not texts:
        return []
    hits = index.search_batch(embedder.embed_batch(texts), k=len(articles))
    out = []
    for text, label, row in zip(texts, labels, hits, strict=True):
        same = [h for h in row if category_of.get(h.id) == label]
        if not same:
            continue
        if len(same) == 1 or same[0].score - same[1].score >= margin:
            out.append(
                TrainingQuery(add_noise(text, rng) if rng.random() < 0.3 else text, same[0].id, "intent")
            )
    return _dedupe(out)


# ---------------------------------------------------------------- hard negatives


def _chunks_by_article(index: ArticleIndex) -> dict[str, list[str]]:
    chunks: dict[str, list[str]] = {}
    for m in index.meta:
        if m.get("text"):
            chunks.setdefault(m["id"], []).append(m["text"])
    return chunks


def build_groups(
    queries: Sequence[TrainingQuery],
    index: ArticleIndex,
    embedder: MiniLMEmbedder,
    *,
    candidates: int,
    negatives: int,
    hard_negatives: int | None = None,
    random_chunk_rate: float = 0.25,
    seed: int = 0,
) -> list[TrainingGroup]:
    """One listwise group per query: the gold article's best chunk (sometimes another of its chunks) and the
    ``hard_negatives`` (default: all ``negatives``) highest-ranked other articles among FAISS's top
    ``candidates``, then random other articles up to ``negatives``."""
    from models.retrieval.reranker import passage_for

    rng = random.Random(seed + 2)
    n_articles = len({m["id"] for m in index.meta})
    chunks = _chunks_by_article(index)
    if not chunks:
        raise ValueError(
            "the index has no chunk texts: rebuild it (`python -m pipelines.indexing build --force`)"
        )
    vectors = embedder.embed_batch([q.text for q in queries])
    groups = []
    for q, ranked in zip(queries, index.search_batch(vectors, k=n_articles), strict=True):
        gold = next((h for h in ranked if h.id == q.article_id), None)
        if gold is None:
            continue
        positive = passage_for(gold)
        if rng.random() < random_chunk_rate and len(chunks.get(q.article_id, [])) > 1:
            positive = rng.choice(chunks[q.article_id])
        n_hard = negatives if hard_negatives is None else min(hard_negatives, negatives)
        hard = [h for h in ranked[:candidates] if h.id != q.article_id][:n_hard]
        others = [h for h in ranked if h.id != q.article_id and h not in hard]
        picked: list[Hit] = hard + rng.sample(others, min(len(others), negatives - len(hard)))
        groups.append(
            TrainingGroup(
                q.text,
                q.article_id,
                positive,
                tuple(passage_for(h) for h in picked),
                tuple(h.id for h in picked),
            )
        )
    return groups


# ---------------------------------------------------------------- evaluation


def load_eval_queries(path: Path = EVAL_FILE) -> list[dict[str, Any]]:
    items = yaml.safe_load(Path(path).read_text())["queries"]
    return [{"query": str(i["query"]), "gold": [str(g) for g in i["gold"]]} for i in items]


def _rank(hits: Sequence[Hit], gold: Sequence[str]) -> int | None:
    return next((r for r, h in enumerate(hits, 1) if h.id in gold), None)


def _ranking_metrics(ranks: Sequence[int | None], suffix: str) -> dict[str, float]:
    n = max(len(ranks), 1)
    return {
        f"recall_at_1_{suffix}": round(sum(r is not None and r <= 1 for r in ranks) / n, 4),
        f"recall_at_3_{suffix}": round(sum(r is not None and r <= 3 for r in ranks) / n, 4),
        f"mrr_at_10_{suffix}": round(sum(1.0 / r for r in ranks if r is not None and r <= 10) / n, 4),
    }


def evaluate_retrieval(
    items: Sequence[dict[str, Any]],
    index: ArticleIndex,
    embedder: MiniLMEmbedder,
    reranker: Any | None,
    *,
    candidates: int,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """FAISS alone (``search_batch(vectors, 10)``, no category preference) versus FAISS's top ``candidates``
    reranked. Returns the metrics and one row per query (ranks, top-3 ids of both)."""
    queries = [i["query"] for i in items]
    vectors = embedder.embed_batch(queries)
    faiss_hits = index.search_batch(vectors, max(10, candidates))
    faiss_ranks = [_rank(h[:10], i["gold"]) for h, i in zip(faiss_hits, items, strict=True)]
    metrics = _ranking_metrics(faiss_ranks, "faiss")
    metrics[f"candidate_recall_at_{candidates}"] = round(
        sum(_rank(h[:candidates], i["gold"]) is not None for h, i in zip(faiss_hits, items, strict=True))
        / max(len(items), 1),
        4,
    )
    rows = [
        {"query": i["query"], "gold": i["gold"], "rank_faiss": r, "top3_faiss": [h.id for h in hits[:3]]}
        for i, r, hits in zip(items, faiss_ranks, faiss_hits, strict=True)
    ]
    if reranker is None:
        return metrics, rows
    cands = [h[:candidates] for h in faiss_hits]
    reranked = reranker.rerank_batch(queries, cands, 10)
    rr_ranks = [_rank(h, i["gold"]) for h, i in zip(reranked, items, strict=True)]
    metrics.update(_ranking_metrics(rr_ranks, "reranked"))
    w = float(getattr(reranker, "faiss_weight", 0.0))
    if w:  # the cross-encoder alone: its logit is the reranked score minus the FAISS part
        faiss_score = [{h.id: h.score for h in c} for c in cands]
        alone = [
            sorted(row, key=lambda h, fs=fs: -(h.score - w * fs[h.id]))
            for row, fs in zip(reranked, faiss_score, strict=True)
        ]
        metrics.update(
            _ranking_metrics(
                [_rank(h, i["gold"]) for h, i in zip(alone, items, strict=True)], "cross_encoder_only"
            )
        )
    latencies = []  # one query at a time, as the assist stage calls it
    for q, c in zip(queries[:20], cands[:20], strict=False):
        started = time.perf_counter()
        reranker.rerank_batch([q], [c], 3)
        latencies.append((time.perf_counter() - started) * 1000.0)
    metrics["rerank_ms_per_query_p50"] = round(statistics.median(latencies), 2)
    for row, r, hits in zip(rows, rr_ranks, reranked, strict=True):
        row["rank_reranked"] = r
        row["top3_reranked"] = [h.id for h in hits[:3]]
    return metrics, rows


def format_evaluation(metrics: dict[str, float]) -> str:
    head = f"{'retrieval':<22}{'recall@1':>10}{'recall@3':>10}{'MRR@10':>10}"
    lines = [head, "-" * len(head)]
    for label, suffix in (
        ("FAISS", "faiss"),
        ("cross-encoder alone", "cross_encoder_only"),
        ("FAISS + reranker", "reranked"),
    ):
        if f"recall_at_3_{suffix}" in metrics:
            lines.append(
                f"{label:<22}{metrics[f'recall_at_1_{suffix}']:>10.4f}{metrics[f'recall_at_3_{suffix}']:>10.4f}"
                f"{metrics[f'mrr_at_10_{suffix}']:>10.4f}"
            )
    return "\n".join(lines)


def fit_faiss_weight(
    reranker: Any,
    dev: Sequence[TrainingQuery],
    index: ArticleIndex,
    embedder: MiniLMEmbedder,
    *,
    candidates: int,
    weights: Sequence[float] = FAISS_WEIGHTS,
) -> tuple[float, dict[str, float]]:
    """The weight of the FAISS cosine in the reranked score that gives the best MRR@10 on ``dev`` (ties: the
    smaller weight), and the MRR@10 of every weight tried."""
    hits = index.search_batch(embedder.embed_batch([q.text for q in dev]), candidates)
    from models.retrieval.reranker import passage_for

    flat = reranker.score_pairs(
        [q.text for q, row in zip(dev, hits, strict=True) for _ in row],
        [passage_for(h) for row in hits for h in row],
    )
    table: dict[str, float] = {}
    at, logits = 0, []
    for row in hits:
        logits.append(flat[at : at + len(row)])
        at += len(row)
    for w in weights:
        ranks = []
        for q, row, ce in zip(dev, hits, logits, strict=True):
            fused = ce + w * np.array([h.score for h in row], dtype=np.float32)
            order = [row[j] for j in np.argsort(-fused, kind="stable")]
            ranks.append(_rank(order, [q.article_id]))
        table[f"{w:g}"] = _ranking_metrics(ranks, "dev")["mrr_at_10_dev"]
    best = max(weights, key=lambda w: (table[f"{w:g}"], -w))
    return float(best), table


# ---------------------------------------------------------------- training


def _train_cross_encoder(
    groups: Sequence[TrainingGroup], out_dir: Path, config: RerankerConfig, base: Path, progress: bool
) -> dict[str, float]:
    import torch
    from tqdm import tqdm
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    rng = random.Random(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    if config.layers:
        encoder = model.base_model.encoder
        encoder.layer = encoder.layer[: config.layers]
        model.config.num_hidden_layers = len(encoder.layer)
    is_head = lambda name: name.startswith("classifier") or ".pooler." in name  # noqa: E731
    head = [p for n, p in model.named_parameters() if is_head(n)]
    body = [p for n, p in model.named_parameters() if not is_head(n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": body, "lr": config.learning_rate},
            {"params": head, "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = max(1, -(-len(groups) // config.batch_queries))
    total = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * config.warmup_ratio), total)
    size = 1 + config.negatives
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    with tqdm(
        total=total, desc="training kb_reranker", unit="step", file=sys.stderr, disable=not progress
    ) as bar:
        for _ in range(config.epochs):
            order = list(range(len(groups)))
            rng.shuffle(order)
            for start in range(0, len(order), config.batch_queries):
                batch = [groups[i] for i in order[start : start + config.batch_queries]]
                queries = [g.query for g in batch for _ in range(size)]
                passages = [p for g in batch for p in (g.positive, *g.negatives[: config.negatives])]
                encoded = tokenizer(
                    queries,
                    passages,
                    truncation="only_second",
                    max_length=config.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                logits = model(**encoded).logits.view(len(batch), size)
                loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{statistics.fmean(losses[-20:]):.3f}")
    train_seconds = time.perf_counter() - started
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return {
        "train_seconds": round(train_seconds, 1),
        "steps": float(total),
        "loss_first": round(statistics.fmean(losses[: min(20, len(losses))]), 4),
        "loss_last": round(statistics.fmean(losses[-min(20, len(losses)) :]), 4),
    }


def train_reranker(
    settings: Settings,
    out_dir: Path,
    *,
    small: bool = False,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
    config: RerankerConfig | None = None,
    base_model: Path | None = None,
) -> TrainedModel:
    """Generate training pairs from the KB, fine-tune the cross-encoder into ``out_dir`` and evaluate it on
    the hand-written held-out questions. ``threads``: torch threads (default: ``config.threads``)."""
    import torch

    from models.retrieval.reranker import CrossEncoderReranker

    config = replace(config or (SMALL if small else FULL), seed=seed)
    if threads:
        config = replace(config, threads=threads)
    out_dir = Path(out_dir)
    base = Path(base_model) if base_model else packaged_minilm_path()
    base_name = base.name if base_model else "all-MiniLM-L6-v2"
    started = time.perf_counter()

    index_folder = build_index(settings)
    index = ArticleIndex.load(index_folder)
    embedder = MiniLMEmbedder(settings.embedding_model_path)
    articles = load_articles(settings.kb_path)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    with torch_threads(config.threads):
        queries = generate_queries(articles, seed=seed) + intent_queries(
            settings.intents_path, articles, index, embedder, margin=config.intent_margin, seed=seed
        )
        queries = _dedupe(queries)
        if config.max_queries and len(queries) > config.max_queries:
            queries = random.Random(seed + 3).sample(queries, config.max_queries)
        seen = {_normalise(q.text) for q in queries}
        dev = [q for q in generate_queries(articles, seed=seed + 11) if _normalise(q.text) not in seen]
        dev = random.Random(seed + 4).sample(dev, min(config.dev_queries, len(dev)))
        groups = build_groups(
            queries,
            index,
            embedder,
            candidates=settings.rerank_candidates,
            negatives=config.negatives,
            hard_negatives=config.hard_negatives,
            random_chunk_rate=config.random_chunk_rate,
            seed=seed,
        )
        print(
            f"{len(groups)} training queries ({dict(Counter(q.source for q in queries))}), "
            f"1 positive + {config.negatives} negatives each ({config.hard_negatives} from FAISS's top "
            f"{settings.rerank_candidates})",
            file=sys.stderr,
        )
        training = _train_cross_encoder(groups, out_dir, config, base, progress)
        manifest = {
            "kind": "cross_encoder",
            "task": "reranker",
            "base_model": base_name,
            "layers": config.layers,
            "max_length": config.max_length,
            "passage": "best chunk of the article: title. tags + one paragraph (Hit.text)",
        }
        write_manifest(out_dir, **manifest, faiss_weight=0.0)
        reranker = CrossEncoderReranker(out_dir, name=NAME)
        faiss_weight, dev_table = fit_faiss_weight(
            reranker, dev, index, embedder, candidates=settings.rerank_candidates
        )
        reranker.faiss_weight = faiss_weight
        print(f"faiss_weight {faiss_weight:g} (dev MRR@10 by weight: {dev_table})", file=sys.stderr)
        items = load_eval_queries()
        metrics, rows = evaluate_retrieval(
            items, index, embedder, reranker, candidates=settings.rerank_candidates
        )
    metrics.update(
        {
            "train_queries": float(len(groups)),
            "eval_queries": float(len(items)),
            "train_seconds": training["train_seconds"],
            "loss_first": training["loss_first"],
            "loss_last": training["loss_last"],
            "total_seconds": round(time.perf_counter() - started, 1),
        }
    )
    metrics["faiss_weight"] = faiss_weight
    write_manifest(
        out_dir,
        **manifest,
        faiss_weight=faiss_weight,
        metrics={k: v for k, v in metrics.items() if k.startswith(("recall", "mrr", "candidate"))},
    )
    params = {
        **asdict(config),
        "small": small,
        "base_model": base_name,
        "rerank_candidates": settings.rerank_candidates,
        "query_sources": dict(Counter(q.source for q in queries)),
        "steps": training["steps"],
    }
    report = {
        "metrics": metrics,
        "candidates": settings.rerank_candidates,
        "eval_file": EVAL_FILE.name,
        "faiss_weight": faiss_weight,
        "dev_mrr_at_10_by_faiss_weight": dev_table,
        "dev_queries": len(dev),
        "queries": rows,
    }
    # Serving it must not make the first suggestion worse: it has to keep recall@3 and improve MRR@10.
    beats = (
        metrics["recall_at_3_reranked"] >= metrics["recall_at_3_faiss"]
        and metrics["mrr_at_10_reranked"] > metrics["mrr_at_10_faiss"]
    )
    return TrainedModel(NAME, out_dir, params, metrics, {"evaluation.json": report}, beats_baseline=beats)


# ---------------------------------------------------------------- CLI


def evaluation_table(trained: TrainedModel) -> str:
    m = trained.metrics
    candidates = trained.reports["evaluation.json"]["candidates"]
    return "\n".join(
        [
            format_evaluation(m),
            f"FAISS candidates reranked: {candidates} (gold among them: "
            f"{m[f'candidate_recall_at_{candidates}']:.4f}); {int(m['eval_queries'])} held-out queries, "
            f"{int(m['train_queries'])} training queries, trained in {m['train_seconds']:.0f}s, "
            f"rerank {m['rerank_ms_per_query_p50']:.1f} ms/query (p50)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(
        argv,
        prog="python -m pipelines.training.reranker",
        description="Train the knowledge-base cross-encoder reranker (kb_reranker) on questions generated from the "
        "KB, evaluate recall@3 with and without it on hand-written held-out questions, and register it in MLflow.",
        name=NAME,
        train=train_reranker,
        table=evaluation_table,
    )


if __name__ == "__main__":
    sys.exit(main())
