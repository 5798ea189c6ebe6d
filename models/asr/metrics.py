"""Word error rate with a light, documented text normalisation (shared by tests and benchmarks).

Normalisation (both sides): lower case, curly quotes to straight, ``%`` to " percent", ``&`` to " and ",
hyphens/slashes to spaces, unambiguous contractions expanded as Whisper's English normaliser does ("I'm" →
"i am", "don't" → "do not", "won't" → "will not", "we'll" → "we will"; "'s" and "'d" are ambiguous and kept),
every other punctuation mark dropped (apostrophes inside words are kept: "it's" stays one word), numbers 0–99
written as words ("5" → "five", "42" → "forty two"), whitespace collapsed. That is deliberately less than
Whisper's English normaliser: no spelling variants, no currency or date rules.
For a corpus, sum :func:`word_errors` over utterances and divide (do not average per-utterance WERs).
"""

from __future__ import annotations

import re

__all__ = ["normalize_text", "word_errors", "wer"]

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

_QUOTES = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}
)
_SPACED = re.compile(r"[-/_]")
_DROP = re.compile(r"[^\w\s']")
_EDGE_APOSTROPHES = re.compile(r"(?<!\w)'|'(?!\w)")
_NUMBER = re.compile(r"\b\d{1,2}\b")
_CONTRACTIONS = [
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"\bcannot\b"), "can not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"\blet's\b"), "let us"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'m\b"), " am"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'ll\b"), " will"),
]


def _number_words(match: re.Match[str]) -> str:
    n = int(match.group(0))
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] if ones == 0 else f"{_TENS[tens]} {_ONES[ones]}"


def normalize_text(text: str) -> list[str]:
    """The word list WER is computed on (see the module docstring for the rules)."""
    text = text.translate(_QUOTES).lower()
    for pattern, expansion in _CONTRACTIONS:
        text = pattern.sub(expansion, text)
    text = text.replace("%", " percent ").replace("&", " and ")
    text = _SPACED.sub(" ", text)
    text = _DROP.sub(" ", text)
    text = _EDGE_APOSTROPHES.sub(" ", text)
    text = _NUMBER.sub(_number_words, text)
    return text.split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, number of reference words) after normalisation."""
    ref = normalize_text(reference)
    hyp = normalize_text(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (ref_word != hyp_word),  # substitution or match
            )
        previous = current
    return previous[-1], len(ref)


def wer(ref: str, hyp: str) -> float:
    """Word error rate of ``hyp`` against ``ref`` (0.0 is perfect; can exceed 1.0 with many insertions).

    An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise.
    """
    errors, n_ref = word_errors(ref, hyp)
    if n_ref == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / n_ref
