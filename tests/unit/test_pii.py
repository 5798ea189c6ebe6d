"""Unit tests for models.text.pii (offline Presidio + spaCy PII redaction)."""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from models.text import pii
from models.text.pii import ENTITY_TYPES, PiiDetectionError, PiiDetector, PiiSpan, RedactionResult

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    return PiiDetector()


# The corpus lives in tests/data/pii_corpus.yaml (format described there); tests/unit/test_pii_everywhere.py
# sends the same values through every text path of the pipeline.
CORPUS_FILE = Path(__file__).resolve().parents[1] / "data" / "pii_corpus.yaml"


def load_corpus(path: Path = CORPUS_FILE) -> tuple[list[tuple[str, list[tuple[str, str]], str]], list[str]]:
    """(cases, negatives): cases are (text, [(raw value, type), ...], style)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    cases = []
    for case in data["cases"]:
        text, items = case["text"], [(raw, etype) for etype, raw in case["pii"]]
        for raw, etype in items:
            assert etype in ENTITY_TYPES, f"unknown type {etype!r} in {text!r}"
            assert text.count(raw) == 1, f"{raw!r} must occur exactly once in {text!r}"
        cases.append((text, items, case.get("style", "chat")))
    return cases, list(data["negatives"])


CASES, NEGATIVES = load_corpus()
# (text, [(raw value, expected type), ...]). Each raw value occurs exactly once in its text.
CORPUS: list[tuple[str, list[tuple[str, str]]]] = [(text, items) for text, items, _ in CASES]

# The structured types of issue 8 ("recall >= 0.95 for e-mail, phone, card, SSN, bank account"); a routing
# number is the other half of a US bank account.
STRUCTURED = ("EMAIL", "PHONE", "CARD", "SSN", "BANK_ACCOUNT", "ROUTING_NUMBER")
MIN_RECALL = 0.95
MIN_NEGATIVES_KEPT = 0.95  # share of negative texts that come out unchanged
MIN_CONTEXT_KEPT = 0.98  # share of the non-PII characters of the cases that survive redaction

FLAG_CASES = [
    ("you're a fucking idiot", ("abuse",)),
    ("you people are useless", ("abuse",)),
    ("this is bullshit", ("abuse",)),
    ("Screw you, I'm done", ("abuse",)),
    ("I'll kill you", ("threat",)),
    ("I know where you live", ("threat",)),
    ("I'm going to come down there and hurt you", ("threat",)),
    ("I'll blow up your office", ("threat",)),
    ("I want to kill myself", ("self_harm",)),
    ("I just want to end my life", ("self_harm",)),
    ("sometimes I think about suicide", ("self_harm",)),
    ("I’m going to kill myself", ("self_harm",)),
    ("I'll kill you and then kill myself", ("threat", "self_harm")),
    ("this bill is killing me", ()),
    ("I could kill for a coffee right now", ()),
    ("that's a killer deal, thanks", ()),
    ("I'm dying to know the status", ()),
    ("I skilled up on Scunthorpe history", ()),
    ("Thanks for your help", ()),
]


def _expected_redaction(text: str, items: list[tuple[str, str]]) -> str:
    out = text
    for raw, etype in sorted(items, key=lambda it: -text.index(it[0])):
        i = text.index(raw)
        out = out[:i] + f"[{etype}]" + out[i + len(raw) :]
    return out


def _assert_offsets(result: RedactionResult) -> None:
    prev_end = 0
    for ent in result.entities:
        assert ent.type in ENTITY_TYPES
        assert result.text[ent.start : ent.end] == f"[{ent.type}]"
        assert ent.start >= prev_end
        prev_end = ent.end


def kept_spans(text: str, result: RedactionResult) -> list[list[tuple[int, int]]]:
    """Which characters of ``text`` the redaction kept, as spans of ``text``.

    The redacted text is ``text`` with disjoint, non-empty spans replaced by ``[TYPE]`` placeholders
    (``result.entities`` locates them), so the pieces between placeholders are verbatim pieces of ``text``, in
    order. They are aligned to ``text`` twice, leftmost (lazy gaps) and rightmost (greedy gaps); both
    alignments are returned, and a value counts as caught only when it is caught under each. A redacted text
    that is not of that form (kept text altered) raises AssertionError.
    """
    pieces, pos = [], 0
    for ent in result.entities:
        pieces.append(result.text[pos : ent.start])
        pos = ent.end
    pieces.append(result.text[pos:])
    alignments = []
    for gap in (r"(.+?)", r"(.+)"):
        pattern = gap.join(f"({re.escape(p)})" for p in pieces)
        m = re.fullmatch(pattern, text, re.DOTALL)
        assert m is not None, f"redaction altered the kept text: {text!r} -> {result.text!r}"
        alignments.append([m.span(i) for i in range(1, len(pieces) * 2, 2)])
    return alignments


def caught(text: str, raw: str, result: RedactionResult) -> bool:
    """A value is caught when none of its letters or digits is among the kept characters of the text (under
    either alignment of ``kept_spans``): a value redacted under another type still counts (it did not leak);
    a value redacted only in part (the last four digits survive) does not."""
    start = text.index(raw)
    sensitive = [i for i in range(start, start + len(raw)) if text[i].isalnum()]
    return all(not any(s <= i < e for s, e in spans for i in sensitive) for spans in kept_spans(text, result))


def measure(detector: PiiDetector) -> dict:
    """Per-type recall over the corpus, negatives kept, and non-PII characters kept in the cases."""
    found: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # type -> [caught, total]
    missed: list[str] = []
    context_total = context_kept = 0
    results = detector.redact_batch([t for t, _ in CORPUS])
    for (text, items), result in zip(CORPUS, results, strict=True):
        for raw, etype in items:
            found[etype][1] += 1
            if caught(text, raw, result):
                found[etype][0] += 1
            else:
                missed.append(f"{etype} {raw!r} in {result.text!r}")
        pii_chars = {i for raw, _ in items for i in range(text.index(raw), text.index(raw) + len(raw))}
        kept = {i for s, e in kept_spans(text, result)[0] for i in range(s, e)}
        context = [i for i in range(len(text)) if text[i].isalnum() and i not in pii_chars]
        context_total += len(context)
        context_kept += sum(i in kept for i in context)
    negatives = detector.redact_batch(NEGATIVES)
    changed = [f"{t!r} -> {r.text!r}" for t, r in zip(NEGATIVES, negatives, strict=True) if r.text != t]
    recall = {etype: round(c / n, 4) for etype, (c, n) in sorted(found.items())}
    return {
        "recall": recall,
        "values": {etype: n for etype, (_, n) in sorted(found.items())},
        "missed": missed,
        "negatives_kept": round(1 - len(changed) / len(NEGATIVES), 4),
        "negatives_changed": changed,
        "context_kept": round(context_kept / context_total, 4),
    }


@pytest.fixture(scope="module")
def measured(detector: PiiDetector) -> dict:
    report = measure(detector)
    print(
        f"\nPII corpus: {len(CORPUS)} cases, {len(NEGATIVES)} negatives; values per type {report['values']}"
    )
    print(f"recall per type: {report['recall']}")
    print(f"negatives kept: {report['negatives_kept']}; non-PII characters kept: {report['context_kept']}")
    return report


# ------------------------------------------------------------------ interface


def test_public_interface():
    assert pii.__all__ == ["PiiSpan", "RedactionResult", "PiiDetector", "PiiDetectionError", "ENTITY_TYPES"]
    assert ENTITY_TYPES == (
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
    assert issubclass(PiiDetectionError, RuntimeError)
    span = PiiSpan("EMAIL", 0, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        span.start = 1  # type: ignore[misc]
    assert RedactionResult("x", ()).flags == ()
    assert not hasattr(span, "__dict__")  # slots


def test_corpus_covers_every_entity_type():
    covered = Counter(etype for _, items in CORPUS for _, etype in items)
    assert set(covered) == set(ENTITY_TYPES)
    assert len(CORPUS) >= 150 and len(NEGATIVES) >= 60
    assert all(covered[etype] >= 20 for etype in STRUCTURED), covered
    styles = Counter(style for _, _, style in CASES)
    assert set(styles) == {"chat", "sms", "email", "asr"} and min(styles.values()) >= 10, styles
    assert sum(len(items) > 1 for _, items in CORPUS) >= 20  # several values in one message


# ------------------------------------------------------------------ measured over the whole corpus


@pytest.mark.parametrize("etype", STRUCTURED)
def test_recall_per_structured_type(measured: dict, etype: str):
    recall = measured["recall"][etype]
    missed = [m for m in measured["missed"] if m.startswith(f"{etype} ")]
    assert recall >= MIN_RECALL, (
        f"{etype} recall {recall} < {MIN_RECALL} over {measured['values'][etype]} values; "
        f"all types: {measured['recall']}; missed: {missed}"
    )


def test_every_type_is_mostly_caught(measured: dict):
    assert min(measured["recall"].values()) >= 0.9, measured["recall"]


def test_negatives_and_context_survive(measured: dict):
    assert measured["negatives_kept"] >= MIN_NEGATIVES_KEPT, (
        f"negatives kept {measured['negatives_kept']} < {MIN_NEGATIVES_KEPT}: {measured['negatives_changed']}"
    )
    assert measured["context_kept"] >= MIN_CONTEXT_KEPT, (
        f"non-PII characters kept {measured['context_kept']} < {MIN_CONTEXT_KEPT}"
    )


def test_caught_is_strict_about_partial_redaction():
    text = "card 4111 1111 1111 1111 ok"
    whole = RedactionResult("card [CARD] ok", (PiiSpan("CARD", 5, 11),))
    partial = RedactionResult("card [CARD] 1111 ok", (PiiSpan("CARD", 5, 11),))
    other_type = RedactionResult("card [PHONE] ok", (PiiSpan("PHONE", 5, 12),))
    assert caught(text, "4111 1111 1111 1111", whole)
    assert not caught(text, "4111 1111 1111 1111", partial)
    assert caught(text, "4111 1111 1111 1111", other_type)
    assert not caught(text, "4111 1111 1111 1111", RedactionResult(text, ()))


# ------------------------------------------------------------------ corpus


@pytest.mark.parametrize(
    ("text", "items"), CORPUS, ids=[f"{i:03d}-{c[1][0][1]}" for i, c in enumerate(CORPUS)]
)
def test_corpus_redaction(detector: PiiDetector, text: str, items: list[tuple[str, str]]):
    result = detector.redact(text)
    for raw, etype in items:
        assert raw not in result.text, f"{raw!r} leaked: {result.text!r}"  # (a)
        assert f"[{etype}]" in result.text, f"[{etype}] missing: {result.text!r}"  # (b)
    _assert_offsets(result)  # (c)
    assert Counter(e.type for e in result.entities) == Counter(etype for _, etype in items)
    assert result.text == _expected_redaction(text, items)
    assert result.flags == ()


@pytest.mark.parametrize("text", NEGATIVES)
def test_negatives_unchanged(detector: PiiDetector, text: str):
    result = detector.redact(text)
    assert result.text == text
    assert result.entities == ()


def test_ssn_invalid_areas_not_redacted(detector: PiiDetector):
    for text in ("my ssn is 000-12-3456", "ssn 666-12-3456", "social security 912-34-5678"):
        assert detector.redact(text).text == text


def test_non_luhn_card_is_not_phone_or_card(detector: PiiDetector):
    result = detector.redact("card 4111 1111 1111 1112 was declined")
    assert result.entities == ()


def test_card_digits_not_split_into_phone(detector: PiiDetector):
    result = detector.redact("the card is 4111111111111111 ok")
    assert [e.type for e in result.entities] == ["CARD"]


def test_routing_requires_checksum_and_context(detector: PiiDetector):
    assert detector.redact("routing number 123456789").entities == ()  # bad ABA checksum
    assert detector.redact("ticket 021000021 was closed").entities == ()  # no context


def test_dates_without_birth_context_untouched(detector: PiiDetector):
    text = "my appointment is on 03/14/2025 at 9:30"
    assert detector.redact(text).text == text


def test_redaction_is_idempotent(detector: PiiDetector):
    for text, _ in CORPUS[::5]:
        once = detector.redact(text)
        twice = detector.redact(once.text)
        assert twice.text == once.text


# ------------------------------------------------------------------ content flags


@pytest.mark.parametrize(("text", "flags"), FLAG_CASES)
def test_content_flags(detector: PiiDetector, text: str, flags: tuple[str, ...]):
    result = detector.redact(text)
    assert result.flags == flags
    if not result.entities:
        assert result.text == text


def test_flags_and_redaction_together(detector: PiiDetector):
    result = detector.redact("my name is John Smith and you're a useless idiot")
    assert result.flags == ("abuse",)
    assert "John Smith" not in result.text and "[PERSON]" in result.text


# ------------------------------------------------------------------ batch


def test_redact_batch_matches_redact(detector: PiiDetector):
    texts = [t for t, _ in CORPUS] + NEGATIVES + [t for t, _ in FLAG_CASES]
    batch = detector.redact_batch(texts)
    assert len(batch) == len(texts)
    for text, got in zip(texts, batch, strict=True):
        assert got == detector.redact(text)


def test_redact_batch_empty(detector: PiiDetector):
    assert detector.redact_batch([]) == []


# ------------------------------------------------------------------ failures


def test_broken_engine_raises(detector: PiiDetector, monkeypatch: pytest.MonkeyPatch):
    boom = RuntimeError("engine exploded")

    def broken(*args, **kwargs):
        raise boom

    monkeypatch.setattr(detector._analyzer, "analyze", broken)
    with pytest.raises(PiiDetectionError) as excinfo:
        detector.redact("my ssn is 123-45-6789")
    assert excinfo.value.__cause__ is boom
    with pytest.raises(PiiDetectionError):
        detector.redact_batch(["my ssn is 123-45-6789", "hello"])


def test_broken_nlp_pipeline_raises(detector: PiiDetector, monkeypatch: pytest.MonkeyPatch):
    def broken(*args, **kwargs):
        raise ValueError("spaCy died")

    monkeypatch.setattr(detector._analyzer.nlp_engine, "process_text", broken)
    monkeypatch.setattr(detector._analyzer.nlp_engine, "process_batch", broken)
    with pytest.raises(PiiDetectionError):
        detector.redact("call me at 212-555-0147")
    with pytest.raises(PiiDetectionError):
        detector.redact_batch(["call me at 212-555-0147"])


def test_broken_recognizer_raises(detector: PiiDetector, monkeypatch: pytest.MonkeyPatch):
    recognizer = next(r for r in detector._analyzer.registry.recognizers if r.name == "CardRecognizer")

    def broken(*args, **kwargs):
        raise KeyError("bad state")

    monkeypatch.setattr(recognizer, "analyze", broken)
    with pytest.raises(PiiDetectionError):
        detector.redact("card 4111 1111 1111 1111")


def test_non_string_input_raises(detector: PiiDetector):
    with pytest.raises(PiiDetectionError):
        detector.redact(None)  # type: ignore[arg-type]
    with pytest.raises(PiiDetectionError):
        detector.redact_batch(["ok", 42])  # type: ignore[list-item]


def test_pathological_input_is_fast(detector: PiiDetector):
    for text in ("a." * 3000 + "@", "-".join(["12"] * 2000), " ".join(["one two"] * 1500)):
        start = time.perf_counter()
        detector.redact(text)
        assert time.perf_counter() - start < 5.0


def test_missing_model_raises_without_download():
    with pytest.raises(PiiDetectionError):
        PiiDetector(spacy_model="en_core_web_definitely_not_installed")
