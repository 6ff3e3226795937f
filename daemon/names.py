"""Which file and folder names promptd never treats as images (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

# Hidden files, editors' and browsers' partial downloads, sync tools' temp names, NAS metadata.
IGNORED_PATTERNS: tuple[str, ...] = (
    ".*",
    "*.tmp",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "._*",
    "~*",
    "*~",
    "@eaDir",
    "#recycle",
    "$RECYCLE.BIN",
    "lost+found",
)


def is_ignored_name(name: str, extra: Iterable[str] = ()) -> bool:
    """True for hidden, temporary and partial names (``.syncthing.x.tmp``, ``x.part``, ``@eaDir``)."""
    return any(fnmatchcase(name, pattern) for pattern in (*IGNORED_PATTERNS, *extra))
