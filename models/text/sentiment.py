"""Sentiment scoring: a lexicon/rule scorer and the fine-tuned transformer, behind one interface.

The rule scorer is VADER (its lexicon ships inside the ``vaderSentiment`` package) plus contact-center
phrases that VADER misses ("third time I'm calling", "still waiting", "on hold for an hour").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, cast

if TYPE_CHECKING:
    from .classifier import SequenceClassifier

__all__ = ["SentimentScore", "SentimentModel", "LexiconSentiment", "TransformerSentiment", "label_for"]

Label = Literal["negative", "neutral", "positive"]


@dataclass(frozen=True, slots=True)
class SentimentScore:
    label: Label
    score: float  # -1 ... 1
    model: str  # "rules" or "name@version"
    emotions: dict[str, float] | None = field(default=None)
    variant: str | None = None  # champion / challenger / rules (set by the serving layer)
    shadow: SentimentScore | None = None  # the shadow challenger's score (recorded, never shown)


class SentimentModel(Protocol):
    """What the sentiment stage needs from any backend (rules, fine-tuned transformer, remote)."""

    name: str

    def score_batch(self, texts: list[str]) -> list[SentimentScore]: ...


def label_for(score: float, threshold: float = 0.05) -> Label:
    """VADER's standard cut-offs on the compound score."""
    if score >= threshold:
        return "positive"
    if score <= -threshold:
        return "negative"
    return "neutral"


# (pattern, adjustment): phrases that signal frustration or satisfaction in support conversations.
_DOMAIN_RULES: tuple[tuple[re.Pattern[str], float], ...] = tuple(
    (re.compile(p, re.IGNORECASE), w)
    for p, w in (
        (r"\b(third|fourth|fifth|\d+(st|nd|rd|th)) time\b", -0.45),
        (r"\bstill (waiting|not|haven'?t|no)\b", -0.4),
        (r"\bon hold for\b", -0.4),
        (r"\b(nobody|no one) (called|calls|got|gets|has) back\b", -0.45),
        (r"\b(waste of|wasting) (my )?time\b", -0.5),
        (r"\b(unacceptable|ridiculous|outrageous|absurd|incompetent|useless)\b", -0.35),
        (r"\b(overcharged|double[- ]charged|charged twice)\b", -0.35),
        (r"\b(never again|fed up|sick of|had enough)\b", -0.45),
        (r"\b(not happy|not ok(ay)?|not acceptable)\b", -0.35),
        (r"\b(lawyer|attorney|sue|lawsuit)\b", -0.3),
        (r"\b(speak|talk) (to|with) (a|your|the) (supervisor|manager)\b", -0.3),
        (r"\b(that|this) (helps|helped|fixed it|worked)\b", 0.35),
        (r"\b(problem|issue) (is )?(solved|resolved|fixed)\b", 0.4),
        (r"\bthanks? (so much|a lot)|thank you so much\b", 0.25),
    )
)


class LexiconSentiment:
    """VADER compound score nudged by domain rules, clipped to -1...1."""

    name = "rules"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()

    def score(self, text: str) -> SentimentScore:
        compound = self._vader.polarity_scores(text)["compound"]
        adjust = sum(w for pattern, w in _DOMAIN_RULES if pattern.search(text))
        value = max(-1.0, min(1.0, compound + adjust))
        return SentimentScore(label=label_for(value), score=round(value, 4), model=self.name)

    def score_batch(self, texts: list[str]) -> list[SentimentScore]:
        return [self.score(t) for t in texts]


class TransformerSentiment:
    """A fine-tuned three-class classifier (``pipelines.training.sentiment``). ``score`` is
    p(positive) − p(negative); ``label`` is the most probable class."""

    def __init__(self, classifier: SequenceClassifier, name: str) -> None:
        missing = {"negative", "neutral", "positive"} - set(classifier.labels)
        if missing:
            raise ValueError(f"{classifier.name} is not a sentiment classifier: labels {classifier.labels}")
        self.classifier = classifier
        self.name = name
        self._pos = classifier.labels.index("positive")
        self._neg = classifier.labels.index("negative")

    def score_batch(self, texts: list[str]) -> list[SentimentScore]:
        probs = self.classifier.predict_proba(texts)
        labels = self.classifier.labels
        return [
            SentimentScore(
                label=cast(Label, labels[int(row.argmax())]),
                score=round(float(row[self._pos] - row[self._neg]), 4),
                model=self.name,
            )
            for row in probs
        ]
