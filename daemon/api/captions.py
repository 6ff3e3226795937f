"""Caption edits from the review page, one at a time or by find-and-replace, always the user's.

A caption is written like every sidecar (``write_atomic``: same-folder temp file, fsync,
rename) and stays one clean line. From then on it is the user's: promptd decides ownership
by the record (``txt_is_ours``: the record names the .txt and its hash matches), so after the
write the record's ``outputs`` are set to what promptd itself writes when it keeps a caption
it did not write (``txt: null``, ``txt_kept: true``). The record is otherwise left alone, so
the image is not redone; the next time it is (a changed rule), the caption is kept, unless
the folder's rule says ``existing_caption: overwrite``.

A find-and-replace is planned first (the preview) and written only when the client sends
back the preview's token, proving it saw exactly these changes; a caption edited in between
is skipped, never overwritten.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from daemon import sidecar
from daemon.api.gallery import CAPTION_CHARS, Item
from daemon.errors import ConfigError
from daemon.fs.atomic import write_atomic
from daemon.pipeline import Context

MAX_CAPTION_CHARS = 10_000
MAX_FIND_CHARS = 500
MAX_CHANGES = 10_000  # captions one find-and-replace may change
PREVIEW_ITEMS = 200  # changes a preview lists in full


def clean_caption(text: str) -> str:
    """One line, blanks collapsed; ValueError when empty, too long or holding control characters."""
    line = " ".join(text.split())
    if not line:
        raise ValueError("a caption cannot be empty (trainers read an empty .txt as no caption)")
    if len(line) > MAX_CAPTION_CHARS:
        raise ValueError(f"a caption may have at most {MAX_CAPTION_CHARS:,} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in line):
        raise ValueError("a caption cannot hold control or invisible formatting characters")
    return line


def txt_path(image: Path, item: Item, ctx: Context) -> Path:
    """The .txt of ``image``: the one on disk, else where the folder's rule names it."""
    if item.txt is not None:
        return image.with_name(item.txt)
    try:
        naming = ctx.rules.resolve(image).settings.naming
    except ConfigError:
        naming = "stem"
    return sidecar.sidecar_paths(image, naming, ctx.config.images.extensions).txt


def write_caption(image: Path, item: Item, text: str, ctx: Context) -> Path:
    """Write the user's caption for ``image`` and make its record say so; returns the .txt."""
    line = clean_caption(text)
    target = txt_path(image, item, ctx)
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise ValueError(f"{target.name} is not a regular file; promptd will not replace it")
    write_atomic(target, sidecar.txt_bytes(line))
    mark_user_owned(image, target)
    return target


def mark_user_owned(image: Path, txt: Path) -> bool:
    """Set the record's ``outputs`` to "kept, not ours" if it claims ``txt``; True if changed."""
    for path in sidecar.sidecar_candidates(image):
        if path.suffix != ".json":
            continue
        doc = sidecar.read_sidecar(path)
        if doc is None or (doc.get("image") or {}).get("file") != image.name:
            continue
        outputs = doc.get("outputs") or {}
        if outputs.get("txt") != txt.name:
            return False
        doc["outputs"] = {"txt": None, "txt_sha256": None, "txt_kept": True}
        write_atomic(path, sidecar.dump_sidecar(doc))
        return True
    return False


@dataclass(frozen=True)
class Change:
    """One caption a find-and-replace would change."""

    id: str
    key: str
    before: str
    after: str


@dataclass(frozen=True)
class Plan:
    """What a find-and-replace would do over the filtered captions."""

    changes: tuple[Change, ...]
    emptied: tuple[str, ...]  # keys whose caption would become empty (left alone)
    token: str

    def preview(self) -> dict[str, object]:
        """The plan as the page shows it: the first changes in full, the counts, the token."""
        return {
            "total": len(self.changes),
            "changes": [c.__dict__ for c in self.changes[:PREVIEW_ITEMS]],
            "emptied": list(self.emptied),
            "token": self.token,
        }


def plan_replace(items: list[Item], find: str, replace: str, *, case_sensitive: bool) -> Plan:
    """The captions (of items with a .txt) in which ``find`` would be replaced by ``replace``."""
    if not find or len(find) > MAX_FIND_CHARS or len(replace) > MAX_FIND_CHARS:
        raise ValueError(f"find must be 1-{MAX_FIND_CHARS} characters, replace at most as many")
    pattern = re.compile(re.escape(find), 0 if case_sensitive else re.IGNORECASE)
    changes: list[Change] = []
    emptied: list[str] = []
    for item in items:
        if item.txt is None or len(item.caption) >= CAPTION_CHARS:
            continue  # no caption file, or one too long for the index to hold whole
        after = " ".join(pattern.sub(lambda _m: replace, item.caption).split())
        if after == item.caption:
            continue
        if not after:
            emptied.append(item.key)
            continue
        changes.append(Change(item.id, item.key, item.caption, after))
        if len(changes) > MAX_CHANGES:
            raise ValueError(f"more than {MAX_CHANGES:,} captions match; narrow the filter")
    digest = hashlib.sha256()
    for change in changes:
        digest.update(f"{change.id}\x00{change.before}\x00{change.after}\x00".encode())
    return Plan(tuple(changes), tuple(emptied), digest.hexdigest()[:32])
