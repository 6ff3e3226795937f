"""Which file and folder names promptd never treats as images (pure, no I/O).

The rule file ``.promptd.yaml`` is hidden, but it is never ignored: its changes matter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from fnmatch import translate
from functools import lru_cache

RULE_FILE = ".promptd.yaml"  # a folder's rules (daemon.config.rules reads them)
# Dataset manifests a folder may keep (daemon.dataset); no image's sidecar takes these names.
MANIFEST_FILES = frozenset({"metadata.jsonl", "metadata_kohya.json", "captions.csv"})

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
    "*.temp",
    "__MACOSX",
    "System Volume Information",
    # NFS "silly rename": a file deleted or replaced while open becomes .nfsXXXX until closed
    # (already hidden; named for the scans of shared inboxes, which must never send one).
    ".nfs*",
)


def is_ignored_name(name: str, extra: Iterable[str] = ()) -> bool:
    """True for hidden, temporary and partial names (``.syncthing.x.tmp``, ``x.part``, ``@eaDir``)."""
    return _matcher(tuple(extra))(name) is not None


@lru_cache(maxsize=16)
def _matcher(extra: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """One regex for every pattern (what ``fnmatchcase`` does one pattern at a time): scans
    call this for every name in the tree."""
    patterns = (*IGNORED_PATTERNS, *extra)
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns)).match
