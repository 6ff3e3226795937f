"""The .txt line from hostile text: cleaned, fitted near-linearly, never over budget."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.clean import clean_text
from daemon.errors import OutputError
from daemon.pipeline.compose.text import (
    CHARS_PER_TOKEN,
    assemble_line,
    clean_field,
    clean_prompt,
    fit_to_tokens,
)
from daemon.pipeline.write import estimate_tokens


def words(text: str) -> int:
    """A whitespace word counter standing in for the CLIP tokenizer."""
    return len(text.split())


class Counting:
    """A token counter (estimate_tokens) that remembers how much text it was asked to count."""

    def __init__(self) -> None:
        self.calls = 0
        self.chars = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        self.chars += len(text)
        return estimate_tokens(text)


def test_clean_prompt_hostile_answer_is_one_plain_line():
    """The issue's answer: ANSI, NUL, BEL, CR and U+202E never reach the caption."""
    raw = "a red \x1b[31mfox\x1b[0m\x00 in snow\x07,\rbright\u202e txet, zero\u200bwidth"
    assert clean_prompt(raw) == "a red fox in snow, bright txet, zerowidth"


def test_clean_prompt_markup_hidden_behind_invisible_characters_is_still_removed():
    """A <think> tag or a label split by zero-width characters is recognised once cleaned."""
    raw = "<th\u200bink>secret plan</think>\nPro\u200bmpt: a quiet harbour"
    assert clean_prompt(raw) == "a quiet harbour"


def test_clean_field_removes_thinking_and_fences_from_descriptive_fields():
    """Descriptive fields lose think blocks, fences and controls, keep their words."""
    raw = "\x1b[1mUn faro\x1b[0m <think>plan</think> ```text\njunto al mar\n```\u202e"
    assert clean_field(raw) == "Un faro junto al mar"


def test_assemble_line_cleans_trigger_words_prefix_and_suffix_from_rule_files():
    """Rule files are untrusted too: their words reach the .txt cleaned."""
    line = assemble_line(["zx\x1b[31mq\u200b"], "ph\u202eoto\n", "a cat", "\x07best", 75, words)
    assert line == "zxq, photo, a cat, best"


def test_assemble_line_200_kb_prompt_fits_and_counts_only_a_bounded_prefix():
    """A 200 KB answer: the line fits the budget and the counter saw a few KB, not 200 KB."""
    prompt = ", ".join(f"phrase number {i}" for i in range(12_000))
    assert len(prompt) > 200_000
    counter = Counting()
    line = assemble_line(["zxq"], "photo", prompt, "masterpiece", 75, counter)
    assert estimate_tokens(line) <= 75 and line.startswith("zxq, photo, phrase number 0")
    assert counter.chars < 40 * CHARS_PER_TOKEN * 75  # bounded by the budget, not the answer
    assert counter.calls < 40


def test_fit_to_tokens_one_200_kb_piece_without_commas_is_cut_at_a_word():
    """No commas at all: the single piece is cut at a word boundary within the budget."""
    line = fit_to_tokens(["sks", "word " * 40_000], 10, words, keep=1)
    assert line == "sks, " + " ".join(["word"] * 9)


def test_assemble_line_only_invisible_text_raises_output_error():
    """A line that is empty once cleaned is refused (the caller falls back)."""
    with pytest.raises(OutputError):
        assemble_line([], "\u200b", "\x1b[31m\x00", "\ufeff", 75, words)


PIECE = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)
COUNTERS = st.sampled_from([words, estimate_tokens, lambda text: (len(text) + 3) // 4])


@given(
    triggers=st.lists(PIECE, max_size=3),
    prefix=PIECE,
    prompt=st.lists(PIECE, max_size=60).map(", ".join),
    suffix=PIECE,
    budget=st.integers(8, 120),
    count=COUNTERS,
)
def test_assemble_line_never_exceeds_the_budget_and_keeps_trigger_words(
    triggers, prefix, prompt, suffix, budget, count
):
    """Any parts, any budget, any counter: within budget (unless the trigger words alone are
    not), trigger words first and whole, one clean line."""
    try:
        line = assemble_line(triggers, prefix, prompt, suffix, budget, count)
    except OutputError:
        return  # nothing at all to write: the caller's fallback
    assert clean_text(line) == line
    kept = [w for w in (clean_text(t.replace(",", " ")) for t in triggers) if w]
    seen: list[str] = []
    for word in kept:  # repeats are written once
        if word.lower() not in (s.lower() for s in seen):
            seen.append(word)
    pieces = [p.strip() for p in line.split(",")]
    if seen:
        assert [p.lower() for p in pieces[: len(seen)]] == [w.lower() for w in seen]
    if count(", ".join(seen)) <= budget:
        assert count(line) <= budget


@given(
    parts=st.lists(st.lists(PIECE, max_size=20).map(", ".join), min_size=1, max_size=5),
    budget=st.integers(1, 60),
    keep=st.integers(0, 2),
)
def test_fit_to_tokens_result_is_within_budget_or_only_the_kept_parts(parts, budget, keep):
    """The result fits, or it is exactly the kept parts (which are never trimmed)."""
    line = fit_to_tokens(parts, budget, words, keep=keep)
    kept = fit_to_tokens(parts[:keep], 10**6, words)
    assert words(line) <= budget or line == kept
    assert line.startswith(kept)
    assert not re.search(r",\s*,", line) and line == line.strip(" ,")


# --- the record --------------------------------------------------------------------------


def test_build_sidecar_records_every_outside_string_cleaned(tmp_path):
    """Context, labels, rule settings and reasons from outside are cleaned in the .json."""
    from daemon.config import RuleSettings
    from daemon.records import Composition, EffectiveRule, Scored
    from daemon.sidecar import build_sidecar, validate_sidecar
    from tests.test_sidecar import make_image

    loaded = make_image(tmp_path / "a.png")
    rule = EffectiveRule(RuleSettings(prefix="ph\x1b[2Joto\u202e"), (tmp_path / "c.yaml",), "fp")
    composition = Composition(
        requested_mode="quality",
        mode="quality",
        prompt="a cat",
        negative_prompt="blur\x07ry",
        context={"brief_caption": "un\u200b gato\r\n", "objects": ("si\x00lla",)},
        models={"llm": "mistral\u202e"},
        degraded_reason=None,
    )
    analysis = {"sty\x1b[1mle": (Scored("oil\u2066 painting", 0.5),)}
    doc = build_sidecar(
        image=loaded,
        rule=rule,
        composition=composition,
        analysis=analysis,
        prompt="a cat",
        txt_name="a.txt",
        degraded_reason="CLIP said \x1b[31mno",
    )
    assert doc["context"] == {"brief_caption": "un gato", "objects": ["silla"]}
    assert doc["analysis"] == {"style": [{"label": "oil painting", "score": 0.5}]}
    assert doc["rule"]["settings"]["prefix"] == "photo"
    assert (doc["negative_prompt"], doc["models"]["llm"]) == ("blurry", "mistral")
    assert doc["degraded_reason"] == "CLIP said no"
    assert validate_sidecar(doc) == []


@pytest.mark.parametrize("line", ["a\u202e cat", "a\x1b[31m cat", "a\u200bcat", " a cat"])
def test_check_txt_line_refuses_a_caption_that_is_not_clean(line):
    """The writer refuses a caption the cleaner would change: no hidden character reaches a .txt."""
    from daemon.sidecar import check_txt_line

    with pytest.raises(ValueError):
        check_txt_line(line)
