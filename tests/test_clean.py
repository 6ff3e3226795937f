"""The one cleaning function for outside text: one clean line, idempotent, nothing hidden."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.clean import clean_lines, clean_text, clean_tree, is_unsafe_char

HOSTILE = (
    "a red \x1b[31mfox\x1b[0m\x00 in snow\x07,\r\nbright\u202e txet\u202c, zero\u200bwidth,"
    " \x1b]0;pwned\x07title, soft\u00adhyphen, bom\ufeff, \u2066isolated\u2069, emoji\ufe0f"
)
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def assert_one_clean_line(text: str) -> None:
    """No line break, no control, format, surrogate or invisible character, NFC, tidy spaces."""
    assert text.splitlines() == ([text] if text else [])
    assert not any(is_unsafe_char(char) for char in text)
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in text)
    assert unicodedata.normalize("NFC", text) == text
    assert text == text.strip() and "  " not in text
    text.encode("utf-8")  # never raises: no lone surrogates


def test_clean_text_hostile_model_text_becomes_one_plain_line():
    """ESC/ANSI and OSC sequences go whole, controls and bidi/zero-width characters go."""
    cleaned = clean_text(HOSTILE)
    assert cleaned == (
        "a red fox in snow, bright txet, zerowidth, title, softhyphen, bom, isolated, emoji"
    )
    assert_one_clean_line(cleaned)


@pytest.mark.parametrize("separator", ["\t", *LINE_BREAKS, "\u00a0", "\u2003", "\u3000"])
def test_clean_text_separators_become_one_space(separator):
    """Tabs, every line break and every kind of space become a single plain space."""
    assert clean_text(f"a{separator}{separator}b") == "a b"


def test_clean_text_composes_to_nfc_and_keeps_ordinary_unicode():
    """Decomposed accents are composed; accents, CJK, emoji and private use stay."""
    assert clean_text("cafe\u0301 東京 🦊 \ue000") == "café 東京 🦊 \ue000"


def test_clean_text_lone_surrogates_and_noncharacters_are_dropped():
    """A name decoded with surrogateescape or a non-character cannot reach a UTF-8 file."""
    assert clean_text("a\udcffb\ud800c\ufdd0d\uffffe\U0010fffe") == "abcde"


def test_clean_text_removed_format_character_cannot_break_nfc():
    """A format character between a letter and its accent goes, and the pair composes."""
    assert clean_text("e\u200b\u0301") == "é"


def test_clean_lines_keeps_the_lines_and_removes_an_escape_spanning_them():
    """Line structure survives for the markup cleaner; an OSC across a break goes whole."""
    assert clean_lines("# Prompt\x1b]0;ti\ntle\x07\n- a\u202e cat\n\n") == [
        "# Prompt",
        "- a cat",
        "",
    ]


def test_clean_tree_cleans_keys_and_values_and_keeps_numbers():
    """Nested model fields: every string cleaned, tuples become lists, numbers untouched."""
    tree = {"ob\x00jects": ("a\nb", {"n": 1.5, "ok": True, "none": None})}
    assert clean_tree(tree) == {"objects": ["a b", {"n": 1.5, "ok": True, "none": None}]}


def test_clean_tree_refuses_what_is_not_json_data():
    """A stray object in a record is a programming error, not something to stringify."""
    with pytest.raises(TypeError):
        clean_tree({"x": object()})


ANY_CHARACTER = st.characters(exclude_categories=())  # lone surrogates included


@given(st.text(alphabet=ANY_CHARACTER))
def test_clean_text_any_unicode_gives_one_clean_line(text):
    """Whatever a model sends, the result is one clean line (or empty: the fallback's cue)."""
    assert_one_clean_line(clean_text(text))


@given(st.text(alphabet=ANY_CHARACTER))
def test_clean_text_is_idempotent(text):
    """Cleaning twice changes nothing: clean text is a fixed point."""
    once = clean_text(text)
    assert clean_text(once) == once


@given(
    st.lists(
        st.sampled_from(
            [
                "\x1b[",
                "\x1b]",
                "\x07",
                "\x9b",
                "31m",
                "a",
                " ",
                "\u202e",
                "\u200d",
                "\ufe0f",
                "e",
                "\u0301",
                "\n",
                "\x1b\\",
                ";",
            ]
        )
    )
)
def test_clean_text_escape_fragments_never_leave_an_escape(parts):
    """Pieces of escape sequences in any order: no ESC or C1 control ever survives."""
    text = "".join(parts)
    cleaned = clean_text(text)
    assert_one_clean_line(cleaned)
    assert clean_text(cleaned) == cleaned


@given(st.text(alphabet=ANY_CHARACTER))
def test_clean_lines_every_line_is_clean(text):
    """Each line clean_lines gives is itself one clean line."""
    for line in clean_lines(text):
        assert_one_clean_line(line)
