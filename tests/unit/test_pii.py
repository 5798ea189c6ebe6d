"""Unit tests for models.text.pii (offline Presidio + spaCy PII redaction)."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import pytest

from models.text import pii
from models.text.pii import ENTITY_TYPES, PiiDetectionError, PiiDetector, PiiSpan, RedactionResult

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    return PiiDetector()


# (text, [(raw value, expected type), ...]). Each raw value must occur exactly once in text.
CORPUS: list[tuple[str, list[tuple[str, str]]]] = [
    # ---- EMAIL
    ("Please send the form to john.doe@example.com today.", [("john.doe@example.com", "EMAIL")]),
    ("my email is MARIA_G+claims@health-mail.org", [("MARIA_G+claims@health-mail.org", "EMAIL")]),
    ("You can reach me at j.smith@company.co.uk or by phone.", [("j.smith@company.co.uk", "EMAIL")]),
    ("my email address is jane dot smith at gmail dot com", [("jane dot smith at gmail dot com", "EMAIL")]),
    ("Contact: priya.patel99@yahoo.com.", [("priya.patel99@yahoo.com", "EMAIL")]),
    # ---- PHONE (US)
    ("call me back at 555-123-4567 please", [("555-123-4567", "PHONE")]),
    ("my cell is (555) 123-4567", [("(555) 123-4567", "PHONE")]),
    ("sure, it's +1 555 123 4567", [("+1 555 123 4567", "PHONE")]),
    ("the number on file should be 5551234567", [("5551234567", "PHONE")]),
    ("212.555.0147 is the best number to reach me", [("212.555.0147", "PHONE")]),
    ("you can text 1-800-555-0199 anytime", [("1-800-555-0199", "PHONE")]),
    ("Phone: (212) 555-0147, mornings only", [("(212) 555-0147", "PHONE")]),
    # ---- PHONE (international)
    ("my UK number is +44 20 7946 0958", [("+44 20 7946 0958", "PHONE")]),
    ("our office in Berlin: +49 30 901820", [("+49 30 901820", "PHONE")]),
    ("the Paris office is +33 1 42 68 53 00 after 9am", [("+33 1 42 68 53 00", "PHONE")]),
    ("my brother in India, +91 98765 43210, is the emergency contact", [("+91 98765 43210", "PHONE")]),
    # ---- CARD
    ("my card number is 4111 1111 1111 1111", [("4111 1111 1111 1111", "CARD")]),
    ("charge it to 5500-0000-0000-0004 please", [("5500-0000-0000-0004", "CARD")]),
    ("the amex is 3782 822463 10005", [("3782 822463 10005", "CARD")]),
    ("card 6011111111111117 expires next year", [("6011111111111117", "CARD")]),
    ("use the visa 4012888888881881 and the cvv is on the back", [("4012888888881881", "CARD")]),
    ("the new card is 6250 9410 0652 8599 123", [("6250 9410 0652 8599 123", "CARD")]),
    ("old visa 4222222222222 was cancelled", [("4222222222222", "CARD")]),
    # ---- SSN
    ("my ssn is 123-45-6789", [("123-45-6789", "SSN")]),
    ("social security number 219 09 9999", [("219 09 9999", "SSN")]),
    ("SSN: 536-22-8761", [("536-22-8761", "SSN")]),
    ("my social is 536228761 if you need it", [("536228761", "SSN")]),
    ("the last four of my social are 6789", [("6789", "SSN")]),
    ("it's 321-54-9876 for my social", [("321-54-9876", "SSN")]),
    # ---- ROUTING_NUMBER
    ("routing number 021000021", [("021000021", "ROUTING_NUMBER")]),
    ("the ABA is 011000015, I think", [("011000015", "ROUTING_NUMBER")]),
    ("routing and transit number: 122105155", [("122105155", "ROUTING_NUMBER")]),
    ("my bank's routing # is 026009593", [("026009593", "ROUTING_NUMBER")]),
    # ---- BANK_ACCOUNT
    ("account number 12345678", [("12345678", "BANK_ACCOUNT")]),
    ("my checking acct is 000123456789", [("000123456789", "BANK_ACCOUNT")]),
    ("my savings account is 9876543210123", [("9876543210123", "BANK_ACCOUNT")]),
    ("the IBAN is GB82 WEST 1234 5698 7654 32", [("GB82 WEST 1234 5698 7654 32", "BANK_ACCOUNT")]),
    ("wire it to DE89370400440532013000 by Friday", [("DE89370400440532013000", "BANK_ACCOUNT")]),
    (
        "routing 021000021 and account 4455667788",
        [("021000021", "ROUTING_NUMBER"), ("4455667788", "BANK_ACCOUNT")],
    ),
    # ---- ADDRESS
    ("I live at 1234 Elm Street", [("1234 Elm Street", "ADDRESS")]),
    ("my new place is 55 W. Oak Ave Apt 4B", [("55 W. Oak Ave Apt 4B", "ADDRESS")]),
    (
        "742 Evergreen Terrace, Springfield, IL 62704",
        [("742 Evergreen Terrace, Springfield, IL 62704", "ADDRESS")],
    ),
    ("mail it to PO Box 1234, Austin, TX 78701", [("PO Box 1234, Austin, TX 78701", "ADDRESS")]),
    ("my address is 88 maple drive", [("88 maple drive", "ADDRESS")]),
    (
        "ship to 1600 Pennsylvania Avenue NW, Washington, DC 20500",
        [("1600 Pennsylvania Avenue NW, Washington, DC 20500", "ADDRESS")],
    ),
    ("we moved to 350 5th Avenue Suite 3300 last month", [("350 5th Avenue Suite 3300", "ADDRESS")]),
    ("send the check to P.O. Box 4521", [("P.O. Box 4521", "ADDRESS")]),
    # ---- DOB
    ("I was born on 03/14/1985", [("03/14/1985", "DOB")]),
    ("DOB 1985-03-14", [("1985-03-14", "DOB")]),
    ("my date of birth is March 14, 1985", [("March 14, 1985", "DOB")]),
    ("my birthday is 14 March 1985", [("14 March 1985", "DOB")]),
    ("D.O.B.: 7/4/1976", [("7/4/1976", "DOB")]),
    ("I was born Jan 5th, 1990 in Ohio", [("Jan 5th, 1990", "DOB")]),
    ("03/14/1985 is my date of birth", [("03/14/1985", "DOB")]),
    # ---- MRN
    ("MRN 00482913", [("00482913", "MRN")]),
    ("medical record number 4829133", [("4829133", "MRN")]),
    ("MRN: A-448291", [("A-448291", "MRN")]),
    ("the chart number is 77120934 at the clinic", [("77120934", "MRN")]),
    ("my medical record # is 5502318", [("5502318", "MRN")]),
    # ---- MEMBER_ID
    ("member id XJH448291023", [("XJH448291023", "MEMBER_ID")]),
    ("policy number W123456789", [("W123456789", "MEMBER_ID")]),
    ("subscriber ID 88442211", [("88442211", "MEMBER_ID")]),
    ("my insurance ID is BCX-44821-09", [("BCX-44821-09", "MEMBER_ID")]),
    ("group number 0047821 is on the card", [("0047821", "MEMBER_ID")]),
    ("my Medicare number is 1EG4-TE5-MK73", [("1EG4-TE5-MK73", "MEMBER_ID")]),
    # ---- PERSON
    ("Hi, my name is John Smith", [("John Smith", "PERSON")]),
    ("this is Maria Gonzalez calling about my claim", [("Maria Gonzalez", "PERSON")]),
    ("I'm Priya Patel", [("Priya Patel", "PERSON")]),
    ("my name is john smith and I need help", [("john smith", "PERSON")]),
    ("Can I speak to Dr. Alan Turing?", [("Alan Turing", "PERSON")]),
    ("My wife Sarah called yesterday", [("Sarah", "PERSON")]),
    ("I talked to Kevin last week about the refund", [("Kevin", "PERSON")]),
    ("The account holder is Robert Johnson", [("Robert Johnson", "PERSON")]),
    ("Please ask for Emily Chen when you call", [("Emily Chen", "PERSON")]),
    ("my name's Tomás Herrera", [("Tomás Herrera", "PERSON")]),
    # ---- numbers as ASR emits them (spoken digits / digit-by-digit)
    (
        "my phone number is six one four five five five zero one nine nine",
        [("six one four five five five zero one nine nine", "PHONE")],
    ),
    (
        "my social is four one two, eight eight, one two three four",
        [("four one two, eight eight, one two three four", "SSN")],
    ),
    ("the card number is 4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", [("4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", "CARD")]),
    (
        "member number is seven seven eight one two three four five",
        [("seven seven eight one two three four five", "MEMBER_ID")],
    ),
    ("my member id is ZGP 4482 9910", [("ZGP 4482 9910", "MEMBER_ID")]),
    # ---- mixed utterances
    (
        "Hi this is Maria Gonzalez, my member id is XJH448291023 and my date of birth is 03/14/1985",
        [("Maria Gonzalez", "PERSON"), ("XJH448291023", "MEMBER_ID"), ("03/14/1985", "DOB")],
    ),
    (
        "My name is David Lee, card 4111 1111 1111 1111, call 212-555-0147",
        [("David Lee", "PERSON"), ("4111 1111 1111 1111", "CARD"), ("212-555-0147", "PHONE")],
    ),
    (
        "email john.doe@example.com or call +44 20 7946 0958",
        [("john.doe@example.com", "EMAIL"), ("+44 20 7946 0958", "PHONE")],
    ),
    ("ssn 536-22-8761, MRN 00482913", [("536-22-8761", "SSN"), ("00482913", "MRN")]),
    (
        "I owe $120.50 on card 5500 0000 0000 0004 and live at 12 Oak Lane",
        [("5500 0000 0000 0004", "CARD"), ("12 Oak Lane", "ADDRESS")],
    ),
]

NEGATIVES = [
    "The total was $120.50 and I paid it at 10:30.",
    "I have 3 claims pending from 2023.",
    "reference 1234 5678 9012 3456",
    "the number 4111111111111112 doesn't work",
    "Thanks so much for your help today.",
    "I waited 20 minutes on the road.",
    "The appointment is at 2:45 pm on Tuesday.",
    "My copay went from $25 to $40 in 2024.",
    "I called 4 times last week and twice in March.",
    "Claim 3 of 5 was denied.",
    "my account balance is $2,500.00",
    "The deductible is 1500 dollars.",
    "I'm Sorry, this is Ridiculous.",
    "Please hold for 5 minutes.",
    "Can you check my account?",
    "It happened on March 14, 2024.",
    "I paid 120.50 on 03/14/2024.",
    "Version 2.3.1 of the app crashes.",
    "I need 2 refills of 30 tablets each.",
    "I was charged 89.99 twice this month.",
    "I'm Diabetic, so I need the insulin covered.",
    "This is Blue Shield calling for a prior authorization.",
    "I need one, two, three, four things.",
    "I called nine one one last night.",
    "Order 987654321 never arrived.",
    "Flight 1234 lands at 5:30.",
    "I was born in 1962 in Cleveland.",
    "I live on Oak Street near the hospital.",
    "Apple Pay isn't working",
    "how do I cancel Maple Ridge Plus",
    "",
]

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
    covered = {etype for _, items in CORPUS for _, etype in items}
    assert covered == set(ENTITY_TYPES)
    assert len(CORPUS) >= 60


# ------------------------------------------------------------------ corpus


@pytest.mark.parametrize(
    ("text", "items"), CORPUS, ids=[f"{i:02d}-{c[1][0][1]}" for i, c in enumerate(CORPUS)]
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
