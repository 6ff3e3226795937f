"""The bytes of a sidecar record: JSON that shows no hidden characters and is valid UTF-8.

Names are recorded exactly, so a file name may hold a bidi override or a zero-width space;
``dump_sidecar`` writes every such character as a ``\\uXXXX`` escape, so the file shown in a
terminal or an editor shows them as escapes, while the values read back are unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from daemon.clean import is_unsafe_char


def dump_sidecar(doc: Mapping[str, Any]) -> bytes:
    """The .json bytes: UTF-8, indented, keys in build order, final newline.

    Characters that could hide or reorder text (controls, bidi, zero-width: ``is_unsafe_char``)
    can only be in strings, and are written as ``\\uXXXX`` escapes, so showing the file in a
    terminal or an editor shows them as such; the values read back are unchanged. Raises
    ValueError for a lone surrogate (a name that skipped ``daemon.fs.rawname``): a bug.
    """
    text = json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=False, allow_nan=False)
    if not (text.isascii() and "\x7f" not in text):
        text = "".join(_json_escape(char) if is_unsafe_char(char) else char for char in text)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the record holds text that is not valid Unicode: {exc}") from exc


def _json_escape(char: str) -> str:
    """``char`` as a JSON escape (a surrogate pair above U+FFFF); newlines in the layout stay."""
    if char == "\n":
        return char
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        raise ValueError(f"the record holds a lone surrogate (U+{code:04X}), not valid Unicode")
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"
