"""clip_prompt's vocabularies: promptd's shipped lists, the user's files as untrusted input, and
the clip.vocabularies setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.cli import main
from daemon.config import ClipSettings, load_config
from daemon.errors import ConfigError
from daemon.pipeline.analyze import vocab
from daemon.pipeline.analyze.vocab import load_vocabularies, plain_phrase, vocabulary_sources


def settings(**tables: str) -> ClipSettings:
    """ClipSettings whose vocabularies are ``tables``."""
    return ClipSettings(vocabularies=tables)


def test_shipped_lists_are_package_data_with_thousands_of_clean_phrases() -> None:
    """promptd's own lists load from the package: five tables on by default, thousands of
    phrases, each a plain lowercase phrase without commas, none repeated."""
    tables = load_vocabularies(ClipSettings())
    assert list(tables) == ["mediums", "movements", "lighting", "camera", "flavors"]
    phrases = [p for table in tables.values() for p in table]
    assert len(phrases) >= 8000 and len(tables["flavors"]) >= 6000
    assert all(p == plain_phrase(p) and p == p.lower() and "," not in p for p in phrases)
    assert len({p.casefold() for p in phrases}) == len(phrases)


def test_artists_are_off_by_default_and_used_as_by_name() -> None:
    """artists: builtin adds promptd's artist list, each name as "by NAME"."""
    assert "artists" not in vocabulary_sources(ClipSettings())
    tables = load_vocabularies(settings(artists="builtin"))
    assert len(tables["artists"]) >= 400
    assert all(p.startswith("by ") for p in tables["artists"])


def test_user_file_replaces_a_table_cleaned_and_without_repeats(tmp_path: Path) -> None:
    """A user's list replaces promptd's table of that name: control characters and commas
    become blanks, blank and over-long lines are dropped, repeats (any case, any table) go."""
    path = tmp_path / "flavors.txt"
    lines = [
        "\ufeffquokka  parade",  # a byte-order mark is not part of the phrase
        "Quokka Parade",  # a repeat, other case
        "red, gold\tand\x00 black",
        "   ",
        "x" * 201,
        "oil painting",  # already in promptd's mediums
        "velvet\u200b drapes",
    ]
    path.write_text("\r\n".join(lines), encoding="utf-8")
    tables = load_vocabularies(settings(flavors=str(path)))
    assert tables["flavors"] == ("quokka parade", "red gold and black", "velvet drapes")


def test_user_file_adds_a_table_of_its_own_name(tmp_path: Path) -> None:
    """A table name promptd does not ship adds a table after the others."""
    path = tmp_path / "moods.txt"
    path.write_text("brooding\nwistful\n", encoding="utf-8")
    tables = load_vocabularies(settings(moods=str(path), flavors="off"))
    assert list(tables)[-1] == "moods" and tables["moods"] == ("brooding", "wistful")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"\n \n\t\n,,,\n", "no usable phrase"),
        (b"a\n" * (vocab.MAX_LINES + 1), "lines"),
    ],
    ids=["binary", "nothing usable", "too many lines"],
)
def test_hostile_user_file_is_a_config_error_naming_file_and_table(
    tmp_path: Path, content: bytes, words: str
) -> None:
    """A file that is not UTF-8, has no phrase or too many lines is refused, naming it."""
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_vocabularies(settings(flavors=str(path)))
    assert words in caught.value.message and "clip.vocabularies.flavors" in caught.value.message
    assert caught.value.path == path


def test_oversized_user_file_is_refused_without_reading_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file over the size cap is refused (the cap is lowered so the test stays small)."""
    monkeypatch.setattr(vocab, "MAX_BYTES", 1024)
    path = tmp_path / "big.txt"
    path.write_bytes(b"phrase\n" * 1000)
    with pytest.raises(ConfigError, match="larger than"):
        load_vocabularies(settings(flavors=str(path)))


def test_missing_user_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """A path that does not exist (or is a folder) says so, with the path."""
    for path in (tmp_path / "nope.txt", tmp_path):
        with pytest.raises(ConfigError, match="cannot read") as caught:
            load_vocabularies(settings(camera=str(path)))
        assert str(path) in str(caught.value)


def test_too_many_phrases_in_all_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The phrases of every table together are capped (their embeddings take memory)."""
    monkeypatch.setattr(vocab, "MAX_PHRASES", 5000)
    with pytest.raises(ConfigError, match="phrases in all"):
        load_vocabularies(ClipSettings())


@pytest.mark.parametrize(
    "tables",
    [{"Bad Name": "builtin"}, {"styles": "builtin"}, {"mediums": "  "}],
    ids=["name", "no builtin of that name", "blank"],
)
def test_invalid_vocabulary_settings_are_refused(tables: dict[str, str]) -> None:
    """Table names are lowercase identifiers; builtin only for promptd's own tables."""
    with pytest.raises(ValidationError):
        ClipSettings(vocabularies=tables)


def test_vocabulary_paths_are_relative_to_config_yaml(tmp_path: Path) -> None:
    """A relative file in clip.vocabularies is taken from config.yaml's folder; off is off."""
    (tmp_path / "lists").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        "clip:\n  vocabularies: {flavors: lists/f.txt, artists: builtin, camera: off}\n"
    )
    loaded = load_config(config, {"HOME": str(tmp_path)})
    assert loaded.clip.vocabularies == {
        "flavors": str(tmp_path.resolve() / "lists" / "f.txt"),
        "artists": "builtin",
        "camera": "off",  # YAML's bare off is false: taken as meant
    }


def test_check_config_reports_a_bad_vocabulary_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`promptd check-config` names the broken phrase file and exits 2."""
    (tmp_path / "inbox").mkdir()
    (tmp_path / "f.txt").write_bytes(b"\xc3\x28 broken")
    config = tmp_path / "config.yaml"
    config.write_text("inbox: inbox\nclip:\n  vocabularies: {flavors: f.txt}\n")
    assert main(["check-config", "--config", str(config)]) == 2
    out = capsys.readouterr().out
    assert "f.txt" in out and "not UTF-8" in out
