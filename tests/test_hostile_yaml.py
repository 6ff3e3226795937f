"""Rule files and config.yaml are untrusted: bounded before anything is built from them."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.cli import EXIT_CONFIG, main
from daemon.config import load_config
from daemon.config.rules import RULE_FILE, RuleResolver, parse_rule_file
from daemon.config.yamlfile import parse_yaml
from daemon.config.yamlguard import CONFIG_LIMITS, RULE_FILE_LIMITS
from daemon.errors import ConfigError

MB = 1024 * 1024


def laughs(levels: int, width: int = 10, key: str = "trigger_words") -> str:
    """The "billion laughs" rule file: ``width`` aliases per level, ``width**levels`` values."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    lines.append(f"{key}: [{', '.join([f'*l{levels - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.fixture
def peak_memory() -> Iterator[list[int]]:
    """Traces Python allocations during the test; the list holds the peak bytes afterwards."""
    tracemalloc.start()
    found: list[int] = []
    yield found
    found.append(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()


def write_rule(folder: Path, text: str | bytes) -> Path:
    """A rule file in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RULE_FILE
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def problems_of(path: Path) -> tuple[str, ...]:
    """The problems ``parse_rule_file`` reports for ``path`` (it must refuse it)."""
    with pytest.raises(ConfigError) as caught:
        parse_rule_file(path)
    assert caught.value.path == path
    return caught.value.problems


def test_rule_file_nine_level_alias_bomb_is_refused_in_little_memory(tmp_path):
    """The issue's 361-byte bomb: refused with file, line and what to do; a few MB at most."""
    path = write_rule(tmp_path, laughs(9))
    tracemalloc.start()
    try:
        problems = problems_of(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problems == (
        f"{path}:2: more than 8 aliases (*name) in a rule file; "
        "write the values out instead of referring to anchors",
    )
    assert peak < 5 * MB


def test_rule_file_expansion_bomb_within_the_alias_limit_is_refused(tmp_path):
    """Few aliases of a large list: refused from the node graph, before construction."""
    text = (
        "big: &big ["
        + ", ".join(["x"] * 1000)
        + "]\ntrigger_words: ["
        + ", ".join(["*big"] * 8)
        + "]\n"
    )
    (problem,) = problems_of(write_rule(tmp_path, text))
    assert problem.startswith(f"{tmp_path / RULE_FILE}:2: its aliases expand to more than 5,000")
    assert "billion laughs" in problem


def test_config_yaml_bomb_is_refused_with_every_limit_of_config(tmp_path, peak_memory):
    """config.yaml goes through the same loader: its larger limits still stop a bomb."""
    path = tmp_path / "config.yaml"
    path.write_text(laughs(8, width=8, key="inbox"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"HOME": str(tmp_path)})
    assert "aliases expand to more than 200,000 values" in caught.value.problems[0]
    assert caught.value.problems[0].startswith(f"{path}:")


def test_rule_file_a_few_aliases_are_still_fine(tmp_path):
    """Anchors and aliases as people use them (a repeated value) keep working."""
    text = "prefix: &p photo of zxq\nsuffix: *p\ntrigger_words: [*p]\n"
    assert parse_rule_file(write_rule(tmp_path, text)) == {
        "prefix": "photo of zxq",
        "suffix": "photo of zxq",
        "trigger_words": ("photo of zxq",),
    }


def test_rule_file_recursive_alias_is_refused_with_its_line(tmp_path):
    """An alias inside the list it names would make every walker loop forever."""
    (problem,) = problems_of(write_rule(tmp_path, "mode: clip\ntrigger_words: &t [a, *t]\n"))
    assert problem.startswith(f"{tmp_path / RULE_FILE}:2: an alias refers to the list")


def test_rule_file_nested_a_thousand_levels_is_refused_without_recursion_error(tmp_path):
    """Deep nesting is stopped while composing, long before Python's recursion limit."""
    (problem,) = problems_of(write_rule(tmp_path, "prefix: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert "nested more than 20 levels deep" in problem


def test_rule_file_aliases_nesting_deeper_than_the_limit_are_refused(tmp_path):
    """Each alias may nest what it names one level further: the expanded depth is bounded too."""
    lines = ["a0: &a0 [[[x]]]"] + [f"a{i}: &a{i} [[[*a{i - 1}]]]" for i in range(1, 8)]
    (problem,) = problems_of(write_rule(tmp_path, "\n".join(lines) + "\n"))
    assert "with its aliases expanded it is nested more than 20 levels" in problem


def test_rule_file_larger_than_64_kb_is_refused_naming_its_size(tmp_path):
    """A rule file holds a few settings: 70 KB is refused before it is parsed."""
    path = write_rule(tmp_path, "prefix: " + "x" * 70_000 + "\n")
    assert problems_of(path) == (
        f"{path}: the file is 70,009 bytes, above the 65,536-byte limit for a rule file; "
        "it should hold a few settings, not data",
    )


def test_rule_file_with_too_many_values_is_refused(tmp_path):
    """Thousands of values as written are refused (a rule file is not a data file)."""
    text = "trigger_words:\n" + "".join(f"- w{i}\n" for i in range(6000))
    (problem,) = problems_of(write_rule(tmp_path, text))
    assert "more than 5,000 values in a rule file" in problem


def test_rule_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    """A named pipe would block a plain read forever: refused as not a regular file."""
    tmp_path.mkdir(exist_ok=True)
    os.mkfifo(tmp_path / RULE_FILE)
    assert problems_of(tmp_path / RULE_FILE) == (
        f"{tmp_path / RULE_FILE}: not a regular file; make it a plain text file",
    )


def test_rule_file_linked_to_an_endless_device_is_refused(tmp_path):
    """A rule file linked to /dev/zero would never end: refused, nothing read."""
    (tmp_path / RULE_FILE).symlink_to("/dev/zero")
    assert "not a regular file" in problems_of(tmp_path / RULE_FILE)[0]


def test_rule_file_huge_integer_is_a_clear_problem(tmp_path):
    """An integer of 5,000 digits (Python refuses to convert it) is a problem, not a crash."""
    (problem,) = problems_of(write_rule(tmp_path, "max_prompt_tokens: " + "9" * 5000 + "\n"))
    assert "a value cannot be read" in problem


def test_resolver_bomb_holds_only_its_own_folder(tmp_path):
    """A refused rule file holds its folder like an invalid one; siblings are unaffected."""
    inbox = tmp_path / "inbox"
    write_rule(inbox / "bomb", laughs(9))
    (inbox / "fine").mkdir()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"inbox: {inbox}\n", encoding="utf-8")
    resolver = RuleResolver(load_config(config_path, {"HOME": str(tmp_path)}))
    with pytest.raises(ConfigError) as caught:
        resolver.resolve(inbox / "bomb" / "a.png")
    assert "more than 8 aliases" in str(caught.value)
    assert resolver.resolve(inbox / "fine" / "b.png").settings.mode == "speed"


def test_check_config_reports_the_bomb_and_exits_2(tmp_path, capsys):
    """`promptd check-config` names the file, the line and the limit, and exits 2."""
    inbox = tmp_path / "inbox"
    path = write_rule(inbox / "shared", laughs(9))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"inbox: {inbox}\n", encoding="utf-8")
    assert main(["check-config", "--config", str(config_path)]) == EXIT_CONFIG
    assert f"{path}:2: more than 8 aliases" in capsys.readouterr().out


# --- properties ---------------------------------------------------------------------------

YAML_PIECES = [
    "a", "mode", "clip", ": ", ":", "-", "- ", "[", "]", "{", "}", ",", "\n", "  ", "&a ", "*a",
    "&b ", "*b", "<<: ", "? ", "!!binary ", "!!python/object:os.system ", "!!int ", "!!set ",
    "!!timestamp ", "0x", "9" * 50, "1e999", ".inf", "'", '"', "\\", "#", "|", ">", "---",
    "...", "%YAML 1.1\n", "\t", "\x00", "\ufeff", "~", "null", "trigger_words", "prefix",
    "deep_thinking", "yes", "\u202e",
]  # fmt: skip


def assert_settings_or_config_error(text: str | bytes, tmp_path: Path) -> None:
    """parse_rule_file gives settings or a ConfigError naming the file, in bounded memory."""
    path = write_rule(tmp_path, text)
    tracemalloc.start()
    try:
        result = parse_rule_file(path)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith(str(path)) for p in exc.problems)
    else:
        assert isinstance(result, dict)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 20 * MB


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_rule_file_arbitrary_bytes_give_settings_or_a_clear_error(data, tmp_path):
    """Any bytes at all: settings, or a ConfigError naming the file; never another exception."""
    assert_settings_or_config_error(data, tmp_path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(YAML_PIECES), max_size=200).map("".join))
def test_rule_file_arbitrary_yaml_gives_settings_or_a_clear_error(text, tmp_path):
    """YAML-ish text made of anchors, aliases, tags, merges and brackets: bounded and clear."""
    assert_settings_or_config_error(text, tmp_path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(levels=st.integers(1, 12), width=st.integers(2, 12))
def test_rule_file_any_laughs_shape_is_bounded(levels, width, tmp_path):
    """Bombs of every depth and width: refused (or accepted when small) in bounded memory."""
    assert_settings_or_config_error(laughs(levels, width), tmp_path)


@given(st.lists(st.sampled_from(YAML_PIECES), max_size=200).map("".join))
def test_parse_yaml_config_limits_any_text_is_a_document_or_config_error(text):
    """config.yaml's loader: a document or a ConfigError for any text."""
    try:
        parse_yaml(text, "config.yaml", None, CONFIG_LIMITS)
    except ConfigError as exc:
        assert exc.problems


def test_limits_rule_files_are_tighter_than_config():
    """Rule files (anyone may write one in a shared inbox) get the tighter limits."""
    assert RULE_FILE_LIMITS.max_bytes < CONFIG_LIMITS.max_bytes
    assert RULE_FILE_LIMITS.max_aliases < CONFIG_LIMITS.max_aliases
