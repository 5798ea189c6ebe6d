"""Intent classification by keyword rules plus embedding similarity to labelled examples, the fine-tuned
classifier (MLflow) behind the same ``IntentModel`` interface, and rule-based entity extraction."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from .classifier import SequenceClassifier

__all__ = [
    "IntentPrediction",
    "IntentModel",
    "SimilarityIntentModel",
    "TrainedIntentModel",
    "extract_entities",
    "rule_intent",
    "INTENTS",
]

INTENTS = (
    "billing",
    "insurance_claim",
    "appointment",
    "prescription",
    "account_access",
    "records_request",
    "complaint",
    "cancel",
    "human_agent",
    "other",
)


@dataclass(frozen=True, slots=True)
class IntentPrediction:
    intent: str
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)
    model: str = "rules"
    variant: str | None = None  # champion / challenger / rules (set by the serving layer)
    shadow: IntentPrediction | None = None  # the shadow challenger's prediction (recorded, never shown)


class IntentModel(Protocol):
    name: str

    def predict_batch(self, texts: list[str], vectors: np.ndarray) -> list[IntentPrediction]: ...


# Strong lexical cues. A cue adds a bonus to its intent's similarity before calibration.
_CUES: dict[str, re.Pattern[str]] = {
    intent: re.compile(pattern, re.IGNORECASE)
    for intent, pattern in {
        "billing": r"\b(bill|billed|billing|invoice|statement|charge[sd]?|balance|payment plan|refund|co-?pay|owe)\b",
        "insurance_claim": r"\b(claim|claims|insurance|insurer|eob|explanation of benefits|deductible|"
        r"prior auth\w*|pre-?authori[sz]ation|denied|appeal|out[- ]of[- ]network|coverage)\b",
        "appointment": r"\b(appointment|appt|reschedule|schedule|booking|book|visit|telehealth|check[- ]in)\b",
        "prescription": r"\b(prescription|refill|pharmacy|medication|meds?|rx|dose|dosage|pills?)\b",
        "account_access": r"\b(log ?in|sign ?in|password|portal|locked out|username|two[- ]factor|2fa|mfa|"
        r"verification code)\b",
        "records_request": r"\b(medical records?|my records|copy of (my )?(chart|records?)|lab results|imaging|"
        r"x-?rays?|send (my )?records)\b",
        "complaint": r"\b(complain\w*|unacceptable|rude|terrible|worst|horrible|disappointed|frustrat\w*|"
        r"ridiculous|grievance)\b",
        "cancel": r"\b(cancel\w*|close my account|terminate|unsubscribe|stop (my|the) (membership|plan|service))\b",
        "human_agent": r"\b(real person|human|representative|operator|speak to (a|an|someone)|talk to (a|an|someone)|"
        r"supervisor|manager|live agent)\b",
    }.items()
}
_CUE_BONUS = 0.08
_TEMPERATURE = 0.04


class SimilarityIntentModel:
    """Nearest-example similarity (mean of the top-3 cosine similarities per intent) calibrated by a
    softmax; keyword cues break ties. Labelled examples are embedded once, at index-build time."""

    name = "rules"

    def __init__(self, example_vectors: np.ndarray, example_labels: list[str]) -> None:
        if example_vectors.shape[0] != len(example_labels):
            raise ValueError("one label per example vector is required")
        self.labels = sorted(set(example_labels))
        self._by_intent = {
            label: example_vectors[[i for i, lab in enumerate(example_labels) if lab == label]]
            for label in self.labels
        }

    def _similarities(self, vector: np.ndarray) -> np.ndarray:
        sims = []
        for label in self.labels:
            s = self._by_intent[label] @ vector
            top = np.sort(s)[-3:]
            sims.append(float(top.mean()))
        return np.asarray(sims)

    def predict(self, text: str, vector: np.ndarray) -> IntentPrediction:
        sims = self._similarities(vector)
        for j, label in enumerate(self.labels):
            cue = _CUES.get(label)
            if cue is not None and cue.search(text):
                sims[j] += _CUE_BONUS
        logits = (sims - sims.max()) / _TEMPERATURE
        probs = np.exp(logits) / np.exp(logits).sum()
        best = int(np.argmax(probs))
        return IntentPrediction(
            intent=self.labels[best],
            confidence=round(float(probs[best]), 4),
            scores={label: round(float(p), 4) for label, p in zip(self.labels, probs, strict=True)},
            model=self.name,
        )

    def predict_batch(self, texts: list[str], vectors: np.ndarray) -> list[IntentPrediction]:
        return [self.predict(t, v) for t, v in zip(texts, vectors, strict=True)]


class TrainedIntentModel:
    """A fine-tuned classifier (``pipelines.training.intent``); it reads the text, the embedding vectors the
    interface passes are not needed."""

    def __init__(self, classifier: SequenceClassifier, name: str) -> None:
        self.classifier = classifier
        self.name = name
        self.labels = list(classifier.labels)

    def predict_batch(self, texts: list[str], vectors: np.ndarray | None = None) -> list[IntentPrediction]:
        probs = self.classifier.predict_proba(texts)
        predictions = []
        for row in probs:
            best = int(row.argmax())
            predictions.append(
                IntentPrediction(
                    intent=self.labels[best],
                    confidence=round(float(row[best]), 4),
                    scores={label: round(float(p), 4) for label, p in zip(self.labels, row, strict=True)},
                    model=self.name,
                )
            )
        return predictions


# ---------------------------------------------------------------- entities (on redacted text only)

_ENTITY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "amount",
        re.compile(  # thousands groups only, so "$40, can you" is "$40"
            r"\$\s?\d+(?:,\d{3})*(?:\.\d{2})?|\b\d+(?:,\d{3})*(?:\.\d{2})? (?:dollars|usd)\b", re.IGNORECASE
        ),
    ),
    (
        "date",
        re.compile(
            r"\b(?:today|tomorrow|yesterday|tonight|(?:next|this|last) (?:week|month|monday|tuesday|wednesday|"
            r"thursday|friday|saturday|sunday)|(?:mon|tues|wednes|thurs|fri|satur|sun)day|"
            r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]* \d{1,2}(?:st|nd|rd|th)?)\b",
            re.IGNORECASE,
        ),
    ),
    ("time", re.compile(r"\b\d{1,2}(?::\d{2})? ?(?:am|pm)\b", re.IGNORECASE)),
    (
        "department",
        re.compile(
            r"\b(?:cardiology|dermatology|pediatrics|radiology|oncology|orthopedics|primary care|urgent care|"
            r"billing department|pharmacy|lab|physical therapy|behavioral health|obgyn|ob-gyn)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "medication",
        re.compile(
            r"\b(?:lisinopril|metformin|atorvastatin|amoxicillin|insulin|albuterol|levothyroxine|omeprazole|"
            r"sertraline|ibuprofen|gabapentin|prednisone|losartan|amlodipine|adderall|oxycodone)\b",
            re.IGNORECASE,
        ),
    ),
    ("claim_ref", re.compile(r"\bclaim\s*(?:#|no\.?|number)?\s*([A-Z]{0,3}\d{5,12})\b", re.IGNORECASE)),
    (
        "redacted",
        re.compile(
            r"\[(?:EMAIL|PHONE|CARD|SSN|BANK_ACCOUNT|ROUTING_NUMBER|ADDRESS|DOB|MRN|MEMBER_ID|PERSON)\]"
        ),
    ),
)


def extract_entities(text: str) -> list[tuple[str, str]]:
    """(type, value) pairs found in already-redacted text; redacted placeholders are reported by type only."""
    found: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for kind, pattern in _ENTITY_PATTERNS:
        for match in pattern.finditer(text):
            value = match.group(1) if kind == "claim_ref" else match.group(0)
            item = (kind, value.strip())
            if item not in seen:
                seen.add(item)
                found.append(item)
    return found


def rule_intent(text: str) -> IntentPrediction:
    """Keyword routing alone: the planner's fallback when embeddings or the classifier are unavailable.
    One matching cue → that intent at the hand-off threshold; several or none → low confidence."""
    hits = [label for label, cue in _CUES.items() if cue.search(text)]
    if len(hits) == 1:
        return IntentPrediction(intent=hits[0], confidence=0.6, model="keywords")
    return IntentPrediction(
        intent=hits[0] if hits else "other", confidence=0.3 if hits else 0.0, model="keywords"
    )
