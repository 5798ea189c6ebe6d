from __future__ import annotations

import pytest

from models.asr.base import Word
from pipelines.words import align_words

pytestmark = pytest.mark.unit


def words(*items):
    return [Word(text=t, start=s, end=e, probability=0.9) for t, s, e in items]


def test_unredacted_words_keep_their_times():
    ws = words((" Hello,", 0.0, 0.4), (" world.", 0.5, 0.9))
    out = align_words(ws, "Hello, world.", offset=10.0)
    assert [(w.word, w.start, w.end) for w in out] == [("Hello,", 10.0, 10.4), ("world.", 10.5, 10.9)]


def test_a_redacted_entity_is_one_word_over_the_replaced_times_and_no_raw_word_survives():
    ws = words(
        (" call", 0.0, 0.3), (" 415", 0.4, 0.7), (" 555", 0.8, 1.0), (" 0132", 1.1, 1.5), (" now", 1.6, 1.9)
    )
    out = align_words(ws, "call [PHONE] now")
    assert [w.word for w in out] == ["call", "[PHONE]", "now"]
    phone = out[1]
    assert (phone.start, phone.end) == (0.4, 1.5)
    assert not {"415", "555", "0132"} & {w.word for w in out}


def test_person_name_redaction():
    ws = words(
        (" my", 0, 0.2), (" name", 0.2, 0.4), (" is", 0.4, 0.5), (" Maria", 0.5, 0.9), (" Gonzalez", 0.9, 1.4)
    )
    out = align_words(ws, "my name is [PERSON]")
    assert [w.word for w in out][-1] == "[PERSON]" and out[-1].end == 1.4
