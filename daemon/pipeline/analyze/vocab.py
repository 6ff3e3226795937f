"""clip_prompt's phrase tables: promptd's own lists, shipped as package data, and the user's files.

promptd's lists (``vocab/*.txt`` beside this module) were written for promptd: hand-written
word lists and systematic combinations of them (adjective and noun pairs, colour pairs, lens
focal lengths), nothing copied from CLIP Interrogator; lowercase, one phrase per line, no
commas. ``artists`` holds names only and is off by default; its phrases are used as "by NAME".

A file named in ``clip.vocabularies`` (CLIP Interrogator's ``data/*.txt``, say) is untrusted
input: at most ``MAX_BYTES`` and ``MAX_LINES``; lines longer than ``MAX_LINE_CHARS`` are
dropped; every phrase is cleaned (no control characters, no commas, blanks collapsed);
repeats are dropped, within a table and across tables, case-insensitively. A file that is
missing, too large, not UTF-8 or left without a phrase is a ConfigError naming it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

from daemon.config import ClipSettings
from daemon.config.vocabulary import VOCABULARY_DEFAULTS
from daemon.errors import ConfigError

MAX_BYTES = 16 * 1024 * 1024  # CLIP Interrogator's flavors.txt (100,970 phrases) is ~2.5 MB
MAX_LINES = 250_000
MAX_LINE_CHARS = 200
MAX_PHRASES = 300_000  # over every table: ~600 MB of float32 embeddings at width 512

Vocabulary = dict[str, tuple[str, ...]]


def plain_phrase(text: str) -> str:
    """``text`` as one plain phrase: control and format characters and commas become blanks,
    blanks are collapsed; may be empty."""
    chars = (
        " " if ch == "," or unicodedata.category(ch).startswith(("C", "Z")) else ch for ch in text
    )
    return " ".join("".join(chars).split())


def vocabulary_sources(settings: ClipSettings) -> dict[str, str]:
    """Table -> ``builtin`` or a file, promptd's defaults merged with ``clip.vocabularies``;
    tables set to ``off`` are left out (artists are off unless turned on)."""
    merged = {**VOCABULARY_DEFAULTS, **settings.vocabularies}
    return {name: source for name, source in merged.items() if source != "off"}


def load_vocabularies(settings: ClipSettings) -> Vocabulary:
    """Every table's cleaned phrases, in table order; raises ConfigError naming a bad file."""
    tables: Vocabulary = {}
    seen: set[str] = set()
    total = 0
    for name, source in vocabulary_sources(settings).items():
        if source == "builtin":
            lines = _builtin_lines(name)
            where = f"promptd's {name} list"
        else:
            lines = read_phrase_lines(Path(source), name)
            where = "the file"
        if name == "artists":
            lines = [line if line.lower().startswith("by ") else f"by {line}" for line in lines]
        phrases = unique_phrases(lines, seen)
        if not phrases:
            raise ConfigError(
                f"clip.vocabularies.{name}: {where} has no usable phrase; "
                "give a text file with one phrase per line, or set the table to off",
                Path(source) if source != "builtin" else None,
            )
        total += len(phrases)
        if total > MAX_PHRASES:
            raise ConfigError(
                f"clip.vocabularies: more than {MAX_PHRASES:,} phrases in all (at {where}); "
                "use smaller files or turn some tables off",
                Path(source) if source != "builtin" else None,
            )
        tables[name] = phrases
    return tables


def unique_phrases(lines: Iterable[str], seen: set[str]) -> tuple[str, ...]:
    """The cleaned, non-empty phrases of ``lines`` not in ``seen`` (casefolded; updated)."""
    kept: list[str] = []
    for line in lines:
        phrase = plain_phrase(line)
        key = phrase.casefold()
        if phrase and key not in seen:
            seen.add(key)
            kept.append(phrase)
    return tuple(kept)


def read_phrase_lines(path: Path, name: str) -> list[str]:
    """The lines of a user's phrase file for table ``name``, within the limits; ConfigError
    naming the file and the table otherwise."""
    where = f"clip.vocabularies.{name}"
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read the file ({exc.strerror or exc}); fix the path in "
            "config.yaml or set the table to off",
            path,
        ) from exc
    if len(data) > MAX_BYTES:
        raise ConfigError(
            f"{where}: the file is larger than {MAX_BYTES // (1024 * 1024)} MiB; "
            "a phrase list is a few MB at most",
            path,
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where}: the file is not UTF-8 (byte {exc.start}); save it as UTF-8", path
        ) from exc
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise ConfigError(
            f"{where}: the file has {len(lines):,} lines, more than {MAX_LINES:,}", path
        )
    return [line for line in lines if len(line) <= MAX_LINE_CHARS]


def _builtin_lines(name: str) -> list[str]:
    """The lines of promptd's own list ``name`` (package data)."""
    folder = resources.files("daemon.pipeline.analyze").joinpath("vocab")
    return folder.joinpath(f"{name}.txt").read_text(encoding="utf-8").splitlines()


def check_vocabularies(settings: ClipSettings) -> list[str]:
    """Problems with the configured phrase files, for ``promptd check-config`` (empty: fine)."""
    try:
        load_vocabularies(settings)
    except ConfigError as exc:
        return [str(exc)]
    return []


def table_sizes(tables: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
    """Table -> number of phrases, for log lines."""
    return {name: len(phrases) for name, phrases in tables.items()}
