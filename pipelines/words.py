"""Word timings for redacted text: align the ASR's words to the guardrail's output, so a redacted entity
becomes one word (``[PHONE]``) spanning the times of the words it replaced, and no raw word survives."""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher

from models.asr.base import Word

from .events import TranscriptWord

__all__ = ["align_words"]


def _norm(token: str) -> str:
    return "".join(ch for ch in token.lower() if ch.isalnum())


def align_words(words: Sequence[Word], redacted: str, offset: float = 0.0) -> list[TranscriptWord]:
    """``words``: the ASR words of the raw text (times relative to the utterance); ``redacted``: the text
    after the guardrail. Returns the redacted text's tokens with times (``offset`` added)."""
    tokens = redacted.split()
    if not words or not tokens:
        return []
    raw = [_norm(w.text) for w in words]
    out: list[TranscriptWord] = []
    for op, i1, i2, j1, j2 in SequenceMatcher(
        a=raw, b=[_norm(t) for t in tokens], autojunk=False
    ).get_opcodes():
        if op == "equal":
            for w, t in zip(words[i1:i2], tokens[j1:j2], strict=True):
                out.append(
                    TranscriptWord(
                        word=t,
                        start=round(w.start + offset, 3),
                        end=round(w.end + offset, 3),
                        confidence=round(min(1.0, max(0.0, w.probability)), 4),
                    )
                )
        elif op in ("replace", "insert"):
            span = words[i1:i2] or words[max(0, i1 - 1) : i1] or words[:1]
            start, end = span[0].start, span[-1].end
            conf = min(w.probability for w in span)
            step = (end - start) / (j2 - j1)
            for k, t in enumerate(tokens[j1:j2]):
                out.append(
                    TranscriptWord(
                        word=t,
                        start=round(start + k * step + offset, 3),
                        end=round(start + (k + 1) * step + offset, 3),
                        confidence=round(min(1.0, max(0.0, conf)), 4),
                    )
                )
        # "delete": raw words with no counterpart in the redacted text are dropped
    return out
