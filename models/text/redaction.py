"""Redaction result types, kept apart from the detector so that the processes that only receive results (the
ingress, the pipeline) never import Presidio or spaCy."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ENTITY_TYPES", "PiiSpan", "RedactionResult", "PiiDetectionError"]

ENTITY_TYPES = (
    "EMAIL",
    "PHONE",
    "CARD",
    "SSN",
    "BANK_ACCOUNT",
    "ROUTING_NUMBER",
    "ADDRESS",
    "DOB",
    "MRN",
    "MEMBER_ID",
    "PERSON",
)


@dataclass(frozen=True, slots=True)
class PiiSpan:
    """One redacted entity. ``start``/``end`` locate ``[TYPE]`` in the redacted text."""

    type: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class RedactionResult:
    text: str
    entities: tuple[PiiSpan, ...]
    flags: tuple[str, ...] = ()


class PiiDetectionError(RuntimeError):
    """Detection itself failed; the caller must not use (or forward) the input text."""
