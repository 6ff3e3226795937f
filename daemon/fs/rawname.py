"""File names that are not valid UTF-8, and how a record spells any name exactly.

Linux names are bytes. Python decodes them with ``surrogateescape``: an undecodable byte
such as ``\\xff`` (a Latin-1 name from an old USB stick or SMB share) becomes a lone
surrogate (``\\udcff``) that no UTF-8 file can hold. A sidecar therefore records two forms:

- ``display_name``: valid Unicode, what a person reads; the name itself when it is valid
  UTF-8, otherwise each undecodable byte shown as U+FFFD;
- ``escaped_name``: None when the display form is the name; otherwise the name's bytes
  percent-encoded (every byte that is not part of valid UTF-8, and every ``%``, as ``%XX``),
  so ``urllib.parse.unquote_to_bytes`` gives the exact bytes back (``name_from_record``).

Comparisons between a record and a file on disk go through ``record_names``/``same_name``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

NAME_MAX = 255  # bytes in one file name on ext4, xfs, btrfs, tmpfs, NTFS/exFAT via Linux


def is_exact(name: str) -> bool:
    """True when ``name`` is valid Unicode (no byte was undecodable), so it is its own record."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    """``name`` as valid Unicode: itself, or with each undecodable byte shown as U+FFFD."""
    if is_exact(name):
        return name
    return os.fsencode(name).decode("utf-8", "replace")


def escaped_name(name: str) -> str | None:
    """None for a valid UTF-8 name; else its bytes, percent-encoded where not valid UTF-8."""
    if is_exact(name):
        return None
    parts: list[str] = []
    for char in name:
        if "\udc80" <= char <= "\udcff":  # surrogateescape's stand-in for one raw byte
            parts.append(f"%{ord(char) - 0xDC00:02X}")
        elif char == "%":
            parts.append("%25")
        else:
            parts.append(char)
    return "".join(parts)


def name_from_record(file: str, escaped: str | None) -> str:
    """The name a record describes, as Python spells file names (``os.fsdecode``)."""
    if escaped is None:
        return file
    return os.fsdecode(unquote_to_bytes(escaped))


def record_names(name: str) -> dict[str, Any]:
    """``{"file": display, "file_raw": escaped}`` for an ``image`` section."""
    return {"file": display_name(name), "file_raw": escaped_name(name)}


def same_name(image: Mapping[str, Any] | None, name: str) -> bool:
    """True when a record's ``image`` section names exactly ``name``."""
    if not isinstance(image, Mapping) or not isinstance(image.get("file"), str):
        return False
    raw = image.get("file_raw")
    return name_from_record(image["file"], raw if isinstance(raw, str) else None) == name


def name_bytes(name: str) -> int:
    """How many bytes ``name`` takes on disk."""
    return len(os.fsencode(name))
