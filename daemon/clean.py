"""One cleaning function for text that came from outside: model answers, labels, rule settings.

``clean_text`` turns any string into one clean line: NFC, no control characters, no invisible
or bidirectional format characters, single spaces, nothing at either end. Everything promptd
writes to a ``.txt`` and every string it records in a ``.json`` from a model, a rule file or
the label tables goes through it (``clean_tree`` does whole structures). File names do not:
they are identifiers and are recorded exactly (see ``daemon.fs.rawname``).

What goes, and why:
- a terminal escape sequence (``ESC [ 31 m``, an OSC title ``ESC ] 0 ; ... BEL``, a C1 CSI) as a
  whole, so no ``[31m`` is left behind;
- C0 and C1 control characters and DEL: line and field separators (tab, LF, VT, FF, CR, FS..US,
  NEL) become a space, the rest (NUL, BEL, BS, ...) are dropped;
- format characters (Unicode category Cf): bidi embeddings, overrides and isolates
  (U+202A..U+202E, U+2066..U+2069), LRM, RLM, ALM, zero-width space/joiners (U+200B..U+200D;
  emoji ZWJ sequences fall apart into their emoji), word joiner, BOM (U+FEFF), soft hyphen,
  U+180E, interlinear annotations, tag characters;
- other invisible characters used to hide text: variation selectors (U+FE00..U+FE0F,
  U+E0100..U+E01EF; an emoji keeps its default presentation), the combining grapheme joiner,
  the Hangul fillers and the Khmer inherent vowels;
- lone surrogates (they cannot be written as UTF-8) and the 66 Unicode non-characters;
- every kind of space and line separator becomes one plain space, runs collapse to one.

Idempotent: ``clean_text(clean_text(s)) == clean_text(s)``. Imports nothing of promptd.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

# ESC sequences (ECMA-48): a string command (OSC, DCS, SOS, PM, APC) up to its terminator
# (BEL or ST), a CSI with its parameters, or an escape with intermediates and a final byte.
# The 8-bit C1 forms (U+009B CSI, U+009D OSC, ...) are matched too. Every part is a single
# character class, so the patterns are linear in the text.
_ESCAPES = re.compile(
    r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
    r"|(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|\x1b[ -/]*[0-~]"
)
_SEPARATORS = frozenset("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85")
_INVISIBLE = frozenset(
    "\u034f"  # combining grapheme joiner
    "\u115f\u1160\u3164\uffa0"  # Hangul fillers: blank "letters"
    "\u17b4\u17b5"  # Khmer inherent vowels: invisible
    "\u180b\u180c\u180d\u180f"  # Mongolian free variation selectors
)


def _is_variation_selector(code: int) -> bool:
    return 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF


def _is_noncharacter(code: int) -> bool:
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def _replacement(char: str) -> str:
    """What one character becomes: itself, a space, or nothing."""
    if char in _SEPARATORS or char.isspace():
        return " "
    code = ord(char)
    if char in _INVISIBLE or _is_variation_selector(code) or _is_noncharacter(code):
        return ""
    category = unicodedata.category(char)
    if category in ("Cc", "Cf", "Cs"):
        return ""
    return char


def _map_chars(text: str) -> str:
    """Every character through ``_replacement``; plain printable ASCII skips the table."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_replacement(char) for char in text)


def clean_text(text: str) -> str:
    """``text`` as one clean line (see the module docstring); may be empty."""
    text = _ESCAPES.sub("", text)
    text = _map_chars(unicodedata.normalize("NFC", _map_chars(text)))
    return " ".join(text.split())


def clean_lines(text: str) -> list[str]:
    """The lines of ``text``, each cleaned with ``clean_text`` (blank ones kept, as ``""``).

    For text whose line structure means something (a model's answer with bullets and
    headings): escape sequences go first, so one that spans a line break goes as a whole.
    """
    return [clean_text(line) for line in _ESCAPES.sub("", text).splitlines()]


def is_unsafe_char(char: str) -> bool:
    """True for a character ``clean_text`` would drop or turn into a plain space.

    For text that must stay exact (file names) and is escaped instead where it is shown.
    """
    return char != " " and _replacement(char) != char


def clean_tree(value: Any) -> Any:
    """``value`` with every string (mapping keys too) cleaned; tuples become lists.

    Numbers, booleans and None pass unchanged; anything else is an error, because a record
    must hold JSON data only.
    """
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_text(str(key)): clean_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_tree(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise TypeError(f"not JSON data: {type(value).__name__}")


def visible(text: str) -> str:
    """``text`` with every character ``is_unsafe_char`` names written as a Python-style
    escape (``\\x1b``, ``\\u202e``): for exact text shown on a terminal (a file name in a
    log line or in ``promptd status``), where it must neither be altered nor act."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(char) if is_unsafe_char(char) else char for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
