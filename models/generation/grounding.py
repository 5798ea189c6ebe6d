"""Grounded prompting and the grounding check.

The prompt holds only what the guardrail has already redacted (the recent conversation), the planner's intent
and the reranked articles, and asks for a reply from the articles only, citing their ids. The check then
verifies the answer against those articles: every factual sentence must be supported by the articles' words,
every number in it must appear in them, and any cited id must be one of the articles given. A small model
writes fluent text that often invents facts (MODELS.md); what fails the check is never shown as generated
text: the caller falls back to the articles.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "ArticleContext",
    "PromptTemplate",
    "DEFAULT_TEMPLATE",
    "GroundingReport",
    "check_grounding",
    "clean_answer",
]


@dataclass(frozen=True)
class ArticleContext:
    id: str
    title: str
    text: str  # what the answer is checked against (the article's best-matching chunk and its reply)
    summary: str = ""  # what the prompt shows (the article's suggested reply); empty: ``text``

    @property
    def prompt_text(self) -> str:
        return self.summary or self.text


@dataclass(frozen=True)
class PromptTemplate:
    """Chat messages with ``{{articles}}``, ``{{conversation}}``, ``{{question}}`` (the customer's last message), ``{{intent}}``, ``{{provider}}`` and
    ``{{example_id}}`` (the first article's id)
    placeholders (the MLflow prompt-registry syntax). ``version`` names where it came from
    (``assist_reply@2`` from the registry, ``builtin`` otherwise)."""

    messages: tuple[tuple[str, str], ...]
    version: str = "builtin"

    def render(
        self,
        *,
        articles: Sequence[ArticleContext],
        conversation: Sequence[tuple[str, str]],
        intent: str | None,
        provider: str = "our organisation",
    ) -> tuple[dict[str, str], ...]:
        values = {
            "articles": "\n".join(f"- {a.prompt_text.strip()}" for a in articles),
            "conversation": "\n".join(f"{speaker}: {text}" for speaker, text in conversation),
            "intent": intent or "unknown",
            "question": next((t for s, t in reversed(conversation) if s not in ("agent", "S1")), ""),
            "provider": provider,
            "example_id": articles[0].id if articles else "kb-id",
        }

        def fill(text: str) -> str:
            return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m.group(1), m.group(0)), text)

        return tuple({"role": role, "content": fill(content)} for role, content in self.messages)

    def as_registry_template(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    @classmethod
    def from_registry_template(cls, template: object, version: str) -> PromptTemplate:
        if isinstance(template, str):
            return cls(messages=(("user", template),), version=version)
        messages = tuple((str(m["role"]), str(m["content"])) for m in template)  # type: ignore[union-attr]
        return cls(messages=messages, version=version)


DEFAULT_TEMPLATE = PromptTemplate(
    # Measured on held-out questions with the packaged SmolLM2-135M: a single short user turn with the articles'
    # facts and the question keeps a small model on the facts far more often than a system prompt with the full
    # articles and the conversation (which it mostly ignores). Larger models do well with either.
    messages=(
        (
            "user",
            "Facts:\n{{articles}}\n\nQuestion: {{question}}\n\nAnswer the question in one or two sentences "
            "using only the facts.",
        ),
    )
)

_CITATION = re.compile(r"\s*\[((?:kb|KB)[-\w.]*)\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_TOKEN = re.compile(r"[a-z0-9$%]+(?:[.,][0-9]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_STOP = frozenset(
    """a an the and or but if then so of to in on at by for with from as is are was were be been being am do does
    did have has had can could will would should may might must shall this that these those it its it's you your
    yours we our ours us i me my they them their he she his her there here what which who whom when where why how
    all any each some no not only also just very too than more most such own same about into over under again
    further once up down out off per via get got let please thank thanks sure help happy glad okay ok yes hi
    hello one able need want like know see check make sure one let's i'll we'll you'll i'm we're you're""".split()
)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _content_words(text: str) -> list[str]:
    return [_stem(w) for w in _TOKEN.findall(text.lower()) if w not in _STOP and (len(w) >= 3 or w.isdigit())]


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


@dataclass
class GroundingReport:
    grounded: bool
    support: float  # the weakest checked sentence's share of content words found in the articles
    citations: list[str] = field(default_factory=list)  # article ids the answer relies on
    reason: str | None = None  # why it was rejected
    unsupported: list[str] = field(default_factory=list)  # the sentences that failed


_SPEAKER_TAG = re.compile(r"^\s*(?:\w+LM|agent|assistant|answer|reply|response)\s*:\s*", re.IGNORECASE)


def clean_answer(text: str, *, truncated: bool = False) -> str:
    """Strip the model's chatter: whitespace, a leading speaker tag ("Assistant:"), surrounding quotes, and a
    dangling unfinished sentence when generation hit its token limit."""
    text = _SPEAKER_TAG.sub("", text.strip()).strip().strip('"').strip()
    if truncated:
        parts = _SENTENCE.split(text)
        if len(parts) > 1 and not re.search(r"[.!?\]]$", parts[-1]):
            text = " ".join(parts[:-1])
    return text


def check_grounding(
    answer: str,
    articles: Sequence[ArticleContext],
    *,
    min_support: float = 0.6,
    question: str = "",
    min_facts: int = 2,
) -> tuple[str, GroundingReport]:
    """(the answer without citation marks, the report). Sentences with fewer than three content words
    ("Sure, I can help with that.") are not checked; an answer with nothing checkable is not grounded, and
    neither is one that brings fewer than ``min_facts`` content words from the articles that the customer's
    ``question`` did not already contain (pleasantries that merely echo the question are not an answer)."""
    known = {a.id.lower(): a.id for a in articles}
    cited_raw = [m.group(1) for m in _CITATION.finditer(answer)]
    text = _CITATION.sub("", answer).strip()
    unknown = [c for c in cited_raw if c.lower() not in known]
    if unknown:
        return text, GroundingReport(False, 0.0, [], f"cites {unknown[0]}, which is not one of the articles")
    if not text:
        return text, GroundingReport(False, 0.0, [], "empty answer")

    vocab_by_article = {
        a.id: {_stem(w) for w in _TOKEN.findall(f"{a.title} {a.text}".lower())} for a in articles
    }
    vocab = set().union(*vocab_by_article.values()) if vocab_by_article else set()
    numbers = set().union(*(_numbers(f"{a.title} {a.text}") for a in articles)) if articles else set()

    weakest, checked, unsupported, reason = 1.0, 0, [], None
    overlap = dict.fromkeys(vocab_by_article, 0)
    for sentence in _SENTENCE.split(text):
        words = _content_words(sentence)
        invented = _numbers(sentence) - numbers
        if invented:
            unsupported.append(sentence)
            reason = reason or f"states {sorted(invented)[0]}, which no article contains"
            weakest = 0.0
            continue
        if len(words) < 3:
            continue
        checked += 1
        support = sum(w in vocab for w in words) / len(words)
        weakest = min(weakest, support)
        for article_id, article_vocab in vocab_by_article.items():
            overlap[article_id] += sum(w in article_vocab for w in words)
        if support < min_support:
            unsupported.append(sentence)
            reason = reason or f"a sentence is only {support:.0%} supported by the articles"
    if checked == 0 and reason is None:
        return text, GroundingReport(False, 0.0, [], "no checkable statement")
    asked = set(_content_words(question))
    facts = {w for w in _content_words(text) if w in vocab and w not in asked}
    if reason is None and len(facts) < min_facts:
        unsupported.append(text)
        reason = f"adds only {len(facts)} fact word(s) from the articles to the question"
    citations = [known[c.lower()] for c in dict.fromkeys(cited_raw)]
    if not citations and overlap:
        citations = [max(overlap, key=lambda k: overlap[k])]
    grounded = not unsupported
    return text, GroundingReport(
        grounded, round(weakest, 3), citations, None if grounded else reason, unsupported
    )
