"""Per-folder rule files: the cascade, validation, caching, fingerprints, roots and check_all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.config import Config, load_config
from daemon.config.rules import (
    RULE_FILE,
    RuleResolver,
    check_all,
    fingerprint_for,
    rule_files_under,
)
from daemon.errors import ConfigError, ImageError


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_config(tmp_path: Path, text: str = "") -> Config:
    """A config whose inbox is ``tmp_path/inbox`` (created), loaded from a real file."""
    (tmp_path / "inbox").mkdir(exist_ok=True)
    path = write(tmp_path / "config.yaml", "inbox: inbox\n" + text)
    return load_config(path, {"HOME": str(tmp_path)})


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """The resolved inbox folder of ``make_config(tmp_path)``."""
    return (tmp_path / "inbox").resolve()


# --- the cascade -------------------------------------------------------------------------


def test_resolve_without_rule_files_uses_config_defaults(tmp_path, inbox):
    """No .promptd.yaml anywhere: the defaults of config.yaml, sourced from config.yaml."""
    config = make_config(tmp_path, "defaults:\n  language: Spanish\n")
    rule = RuleResolver(config).resolve(inbox / "a" / "photo.jpg")
    assert rule.settings == config.defaults
    assert rule.sources == (config.source,)


def test_resolve_nearest_rule_file_wins_key_by_key_across_three_levels(tmp_path, inbox):
    """Each key comes from the nearest file that sets it; unset keys fall through to parents."""
    config = make_config(tmp_path, "defaults:\n  negative_prompt: blurry\n")
    write(inbox / RULE_FILE, "mode: clip\nlanguage: French\nprefix: root\n")
    write(inbox / "a" / RULE_FILE, "language: German\nsuffix: from a\n")
    write(inbox / "a" / "b" / RULE_FILE, "prefix: from b\n")
    resolver = RuleResolver(config)
    deep = resolver.resolve(inbox / "a" / "b" / "photo.png")
    assert deep.settings.mode == "clip"
    assert deep.settings.language == "German"
    assert deep.settings.prefix == "from b"
    assert deep.settings.suffix == "from a"
    assert deep.settings.negative_prompt == "blurry"
    assert deep.sources == (
        config.source,
        inbox / RULE_FILE,
        inbox / "a" / RULE_FILE,
        inbox / "a" / "b" / RULE_FILE,
    )
    middle = resolver.resolve(inbox / "a" / "photo.png")
    assert (middle.settings.prefix, middle.settings.suffix) == ("root", "from a")


def test_resolve_deep_thinking_true_means_quality_and_false_means_speed(tmp_path, inbox):
    """deep_thinking picks the mode for its folder, overriding a parent's mode."""
    config = make_config(tmp_path)
    write(inbox / RULE_FILE, "deep_thinking: true\n")
    write(inbox / "quick" / RULE_FILE, "deep_thinking: false\n")
    resolver = RuleResolver(config)
    assert resolver.resolve(inbox / "x.jpg").settings.mode == "quality"
    assert resolver.resolve(inbox / "quick" / "x.jpg").settings.mode == "speed"


def test_resolve_mode_beats_deep_thinking_in_the_same_file(tmp_path, inbox):
    """A file with both ``mode`` and ``deep_thinking`` uses ``mode``."""
    config = make_config(tmp_path)
    write(inbox / RULE_FILE, "deep_thinking: true\nmode: vision\n")
    assert RuleResolver(config).resolve(inbox / "x.jpg").settings.mode == "vision"


def test_resolve_empty_rule_file_changes_nothing_but_is_a_source(tmp_path, inbox):
    """An empty .promptd.yaml applies no keys and is still listed among the sources."""
    config = make_config(tmp_path)
    write(inbox / RULE_FILE, "# nothing yet\n")
    rule = RuleResolver(config).resolve(inbox / "x.jpg")
    assert rule.settings == config.defaults
    assert rule.sources == (config.source, inbox / RULE_FILE)


# --- invalid rule files ------------------------------------------------------------------


def test_resolve_invalid_rule_file_raises_config_error_naming_file_and_lines(tmp_path, inbox):
    """Every problem of a bad file is reported with that file's path and line numbers."""
    config = make_config(tmp_path)
    bad = write(inbox / "a" / RULE_FILE, "mode: fast\nlanguage: Spanish\nbogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        RuleResolver(config).resolve(inbox / "a" / "b" / "x.jpg")
    assert caught.value.path == bad
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(f"{bad}:1: mode: Input should be ")
    assert problems[1].startswith(f"{bad}:3: bogus: unknown key; known keys: ")
    assert str(caught.value).startswith(f"{bad}: line 1: mode: ")


def test_resolve_bad_deep_thinking_and_yaml_syntax_are_reported_with_lines(tmp_path, inbox):
    """A non-boolean deep_thinking and broken YAML both name the file and line."""
    config = make_config(tmp_path)
    flag = write(inbox / "a" / RULE_FILE, "prefix: x\ndeep_thinking: yes please\n")
    broken = write(inbox / "b" / RULE_FILE, "prefix: x\nsuffix: [y\n")
    resolver = RuleResolver(config)
    with pytest.raises(ConfigError) as caught:
        resolver.resolve(inbox / "a" / "x.jpg")
    assert caught.value.problems == (
        f"{flag}:2: deep_thinking: must be true (mode: quality) or false (mode: speed)",
    )
    with pytest.raises(ConfigError) as caught:
        resolver.resolve(inbox / "b" / "x.jpg")
    assert caught.value.problems[0].startswith(f"{broken}:")
    assert "YAML syntax error" in caught.value.problems[0]


def test_resolve_invalid_rule_file_does_not_hold_sibling_folders(tmp_path, inbox):
    """Only images under the bad file are affected; a sibling folder still resolves."""
    config = make_config(tmp_path)
    write(inbox / "bad" / RULE_FILE, "mode: 3\n")
    resolver = RuleResolver(config)
    with pytest.raises(ConfigError):
        resolver.resolve(inbox / "bad" / "x.jpg")
    assert resolver.resolve(inbox / "good" / "x.jpg").settings.mode == "speed"


def test_resolve_rule_file_that_is_a_list_raises(tmp_path, inbox):
    """A rule file must hold a mapping of settings."""
    config = make_config(tmp_path)
    write(inbox / RULE_FILE, "- mode: clip\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        RuleResolver(config).resolve(inbox / "x.jpg")


# --- caching -----------------------------------------------------------------------------


def test_resolve_picks_up_an_edit_with_a_new_mtime(tmp_path, inbox):
    """Editing a rule file (same size, newer mtime) takes effect on the next resolve."""
    config = make_config(tmp_path)
    rule = write(inbox / RULE_FILE, "language: aa\n")
    resolver = RuleResolver(config)
    assert resolver.resolve(inbox / "x.jpg").settings.language == "aa"
    before = rule.stat().st_mtime_ns
    rule.write_text("language: bb\n", encoding="utf-8")
    os.utime(rule, ns=(before + 1_000_000_000, before + 1_000_000_000))
    assert resolver.resolve(inbox / "x.jpg").settings.language == "bb"


def test_resolve_keeps_the_parsed_file_while_mtime_and_size_are_unchanged(tmp_path, inbox):
    """A file whose mtime and size did not change is not parsed again (the cache answers)."""
    config = make_config(tmp_path)
    rule = write(inbox / RULE_FILE, "language: aa\n")
    resolver = RuleResolver(config)
    resolver.resolve(inbox / "x.jpg")
    st = rule.stat()
    rule.write_text("language: bb\n", encoding="utf-8")
    os.utime(rule, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert resolver.resolve(inbox / "x.jpg").settings.language == "aa"
    assert RuleResolver(config).resolve(inbox / "x.jpg").settings.language == "bb"


def test_resolve_fixing_or_deleting_a_bad_rule_file_releases_its_images(tmp_path, inbox):
    """Once the bad file is fixed (or removed) the same resolver resolves again."""
    config = make_config(tmp_path)
    rule = write(inbox / RULE_FILE, "mode: fast\n")
    resolver = RuleResolver(config)
    with pytest.raises(ConfigError):
        resolver.resolve(inbox / "x.jpg")
    rule.write_text("mode: clip\n", encoding="utf-8")
    assert resolver.resolve(inbox / "x.jpg").settings.mode == "clip"
    rule.unlink()
    assert resolver.resolve(inbox / "x.jpg").sources == (config.source,)


# --- fingerprints ------------------------------------------------------------------------


def test_fingerprint_equal_for_equal_settings_and_models(tmp_path, inbox):
    """Two resolvers over the same files give the same fingerprint; it is sha256 hex."""
    config = make_config(tmp_path)
    write(inbox / RULE_FILE, "prefix: x\n")
    first = RuleResolver(config).resolve(inbox / "a.jpg").fingerprint
    assert first == RuleResolver(config).resolve(inbox / "b.jpg").fingerprint
    assert len(first) == 64
    assert int(first, 16) >= 0


def test_fingerprint_changes_when_a_rule_value_changes(tmp_path, inbox):
    """Changing a setting in a rule file changes the fingerprint."""
    config = make_config(tmp_path)
    write(inbox / RULE_FILE, "prefix: x\n")
    before = RuleResolver(config).resolve(inbox / "a.jpg").fingerprint
    write(inbox / RULE_FILE, "prefix: y\n")
    assert RuleResolver(config).resolve(inbox / "a.jpg").fingerprint != before


def test_fingerprint_changes_when_a_folder_hint_changes(tmp_path, inbox):
    """A folder's hint is part of its rule: editing it redoes that folder only."""
    config = make_config(tmp_path)
    (inbox / "shoes").mkdir()
    write(inbox / "shoes" / RULE_FILE, "hint: name the colourway\n")
    resolver = RuleResolver(config)
    before = resolver.resolve(inbox / "shoes" / "a.jpg")
    beside = resolver.resolve(inbox / "b.jpg").fingerprint
    assert before.settings.hint == "name the colourway"
    write(inbox / "shoes" / RULE_FILE, "hint: never mention the background\n")
    resolver = RuleResolver(config)
    assert resolver.resolve(inbox / "shoes" / "a.jpg").fingerprint != before.fingerprint
    assert resolver.resolve(inbox / "b.jpg").fingerprint == beside


def test_rule_file_hint_longer_than_the_limit_is_a_problem_with_its_line(tmp_path, inbox):
    """A hint over 1,000 characters is refused with the file, line and key."""
    config = make_config(tmp_path)
    write(inbox / RULE_FILE, "mode: speed\nhint: " + "x" * 1001 + "\n")
    with pytest.raises(ConfigError) as caught:
        RuleResolver(config).resolve(inbox / "a.jpg")
    assert any(":2: hint: " in problem and "1000" in problem for problem in caught.value.problems)


def test_fingerprint_follows_only_the_model_of_the_rule_mode(tmp_path):
    """The mode's Ollama model counts; other modes' models and unrelated settings do not."""
    base = make_config(tmp_path, "defaults: {mode: speed}\n")
    settings = base.defaults
    same = fingerprint_for(settings, base)
    quality_model = base.model_copy(
        update={
            "ollama": base.ollama.model_copy(
                update={"models": base.ollama.models.model_copy(update={"quality": "qwen2.5:7b"})}
            )
        }
    )
    speed_model = base.model_copy(
        update={
            "ollama": base.ollama.model_copy(
                update={"models": base.ollama.models.model_copy(update={"speed": "gemma3:1b"})}
            )
        }
    )
    unrelated = base.model_copy(update={"watch": base.watch.model_copy(update={"settle_s": 9.0})})
    assert fingerprint_for(settings, quality_model) == same
    assert fingerprint_for(settings, unrelated) == same
    assert fingerprint_for(settings, speed_model) != same
    clip_settings = settings.model_copy(update={"mode": "clip"})
    assert fingerprint_for(clip_settings, speed_model) == fingerprint_for(clip_settings, base)


def test_fingerprint_changes_with_clip_model_and_label_tables(tmp_path):
    """The CLIP model and the label tables shape the analysis, so they count."""
    base = make_config(tmp_path)
    same = fingerprint_for(base.defaults, base)
    clip = base.clip
    other_model = base.model_copy(update={"clip": clip.model_copy(update={"model": "other/clip"})})
    labels = clip.labels.model_copy(update={"tables": {"lighting": ("soft light",)}})
    other_labels = base.model_copy(update={"clip": clip.model_copy(update={"labels": labels})})
    top_k = base.model_copy(
        update={
            "clip": clip.model_copy(update={"labels": clip.labels.model_copy(update={"top_k": 5})})
        }
    )
    found = {fingerprint_for(base.defaults, c) for c in (other_model, other_labels, top_k)}
    assert same not in found
    assert len(found) == 3


# --- roots -------------------------------------------------------------------------------


def test_root_of_finds_the_inbox_and_rejects_outside_paths(tmp_path, inbox):
    """Paths under the inbox map to it; paths outside (also via ``..``) map to None."""
    resolver = RuleResolver(make_config(tmp_path))
    assert resolver.root_of(inbox / "a" / "b.jpg") == inbox
    assert resolver.root_of(inbox) == inbox
    assert resolver.root_of(tmp_path / "elsewhere.jpg") is None
    assert resolver.root_of(inbox / ".." / "escape.jpg") is None


def test_root_of_rejects_symlinks_escaping_the_inbox(tmp_path, inbox):
    """A symlinked file or folder inside the inbox that leads outside is not in the inbox."""
    resolver = RuleResolver(make_config(tmp_path))
    outside = tmp_path / "outside"
    write(outside / "secret.jpg", "x")
    (inbox / "link.jpg").symlink_to(outside / "secret.jpg")
    (inbox / "linkdir").symlink_to(outside, target_is_directory=True)
    (inbox / "inner.jpg").symlink_to(write(inbox / "real.jpg", "x"))
    assert resolver.root_of(inbox / "link.jpg") is None
    assert resolver.root_of(inbox / "linkdir" / "secret.jpg") is None
    assert resolver.root_of(inbox / "inner.jpg") == inbox


def test_resolve_outside_every_inbox_raises_image_error(tmp_path):
    """Asking for the rule of an image outside the inboxes is refused."""
    resolver = RuleResolver(make_config(tmp_path))
    with pytest.raises(ImageError):
        resolver.resolve(tmp_path / "stray.jpg")


# --- discovery and check_all -------------------------------------------------------------


def test_rule_files_under_skips_hidden_and_nas_folders(tmp_path, inbox):
    """Rule files in hidden folders and Synology's @eaDir are not listed; the rest are, parents first."""
    make_config(tmp_path)
    wanted = [write(inbox / RULE_FILE, ""), write(inbox / "a" / "b" / RULE_FILE, "")]
    write(inbox / ".git" / RULE_FILE, "")
    write(inbox / "@eaDir" / RULE_FILE, "")
    assert list(rule_files_under(inbox)) == wanted


def test_check_all_finds_a_broken_rule_file_deep_in_the_tree(tmp_path, inbox):
    """check_all validates every rule file under every inbox and reports each problem."""
    config = make_config(tmp_path)
    write(inbox / RULE_FILE, "mode: quality\n")
    bad = write(inbox / "a" / "b" / "c" / RULE_FILE, "language: Spanish\nnaming: weird\n")
    problems, warnings = check_all(config)
    assert len(problems) == 1
    assert problems[0].startswith(f"{bad}:2: naming: ")
    assert warnings == []


def test_check_all_warns_about_a_missing_inbox(tmp_path):
    """A missing inbox is a warning (it is created on start), not a problem."""
    path = write(tmp_path / "config.yaml", "inbox: [inbox, later]\n")
    (tmp_path / "inbox").mkdir()
    problems, warnings = check_all(load_config(path, {}))
    assert problems == []
    assert warnings == [
        f"warning: inbox {tmp_path.resolve() / 'later'} does not exist (it will be created on start)"
    ]


def test_check_all_reports_an_inbox_that_is_a_file(tmp_path):
    """An inbox path naming a regular file is a problem."""
    write(tmp_path / "inbox", "not a folder")
    problems, _ = check_all(load_config(write(tmp_path / "config.yaml", "inbox: inbox\n"), {}))
    assert len(problems) == 1
    assert "not a folder" in problems[0]
