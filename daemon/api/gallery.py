"""The inbox as the review page sees it: every image with its status and caption, indexed.

One walk over the inboxes (``walk_folders``: ignored names pruned, symlinks never followed)
lists the images; each one's record and caption are read once and cached by size and mtime,
so re-indexing 10,000 images costs a stat per sidecar. The index is rebuilt at most once a
``REFRESH_S``, and pages are cut from it, so the page never loads the whole inbox.

Items are named by an opaque id (the inbox's number and the image's inbox-relative path,
base64url-encoded). ``resolve`` accepts only ids of images in the current index, checks the
relative path (no ``..``, no absolute part) and that the file is still a regular file at
that exact place (no symlink on the way): no route ever takes a filesystem path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from daemon import sidecar
from daemon.errors import ConfigError
from daemon.fs.treewalk import walk_folders
from daemon.pipeline import Context, is_candidate

Status = Literal["ok", "degraded", "error", "held", "pending"]
STATUSES: tuple[Status, ...] = ("ok", "degraded", "error", "held", "pending")
REFRESH_S = 2.0
MAX_ITEMS = 200_000  # an index beyond this is cut (and says so)
CAPTION_CHARS = 4_000  # of a caption, what the index keeps for filtering and display
_CAP_BYTES = 64 * 1024


@dataclass(frozen=True)
class Item:
    """One image of the inbox as the gallery lists it."""

    id: str
    root: int  # index into the inbox roots
    key: str  # inbox-relative path, POSIX separators
    status: Status
    caption: str  # the .txt on disk, else the record's prompt, else ""
    owner: Literal["promptd", "user", "none"]  # who wrote the .txt
    mode: str | None
    reason: str | None  # degraded reason, error message or the held rule's problem
    mtime_ns: int
    txt: str | None  # the .txt's name when there is one

    def summary(self) -> dict[str, Any]:
        """The item as the page lists it."""
        return {
            "id": self.id,
            "key": self.key,
            "name": PurePosixPath(self.key).name,
            "status": self.status,
            "caption": self.caption,
            "owner": self.owner,
            "mode": self.mode,
            "reason": self.reason,
        }


def item_id(root: int, key: str) -> str:
    """The opaque id of the image ``key`` under inbox number ``root``."""
    return base64.urlsafe_b64encode(f"{root}:{key}".encode()).decode().rstrip("=")


def parse_id(value: str) -> tuple[int, str] | None:
    """(root, key) from an id; None for anything malformed or trying to leave the inbox."""
    if not 0 < len(value) <= 8192:
        return None
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    root, sep, key = text.partition(":")
    if not sep or not root.isdigit() or "\x00" in key or "\\" in key:
        return None
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    return int(root), key


class Gallery:
    """The index of the inboxes; ``ctx`` gives the current pipeline context (roots, rules)."""

    def __init__(self, ctx: Callable[[], Context], clock: Callable[[], float] = time.monotonic):
        self._ctx = ctx
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, Item] = {}
        self._order: list[str] = []
        self._built = -REFRESH_S
        self.truncated = False
        self._files: dict[str, tuple[tuple[int, int], Any]] = {}  # path -> (size, mtime), parsed

    def roots(self) -> tuple[Path, ...]:
        """The inbox folders, resolved, in index order."""
        return self._ctx().rules.roots

    def items(self, *, fresh: bool = False) -> list[Item]:
        """Every indexed image, inbox by inbox, in path order (rebuilt when older than REFRESH_S)."""
        with self._lock:
            if fresh or self._clock() - self._built >= REFRESH_S:
                self._rebuild()
            return [self._items[i] for i in self._order]

    def get(self, value: str) -> Item | None:
        """The indexed item with this id (the index refreshed first if stale)."""
        self.items()
        return self._items.get(value) if parse_id(value) is not None else None

    def resolve(self, value: str) -> tuple[Item, Path]:
        """The item and its image file; KeyError unless it is indexed and still exactly there."""
        parsed = parse_id(value)
        item = self.get(value)
        roots = self.roots()
        if parsed is None or item is None or not 0 <= parsed[0] < len(roots):
            raise KeyError(value)
        root = roots[parsed[0]]
        path = root.joinpath(*parsed[1].split("/"))
        if os.path.realpath(path) != str(path) or not path.is_file() or path.is_symlink():
            raise KeyError(value)
        return item, path

    # --- building ---------------------------------------------------------------------

    def _rebuild(self) -> None:
        ctx = self._ctx()
        items: dict[str, Item] = {}
        order: list[str] = []
        self._touched: set[str] = set()
        self.truncated = False
        for number, root in enumerate(ctx.rules.roots):
            for folder, entries in walk_folders(root, ignore=ctx.config.images.ignore):
                names = {e.name: e for e in entries}
                index = sidecar.index_folder(names, ctx.config.images.extensions)
                held: str | None = None
                for name in sorted(names):
                    path = Path(folder, name)
                    if not is_candidate(path, ctx.config) or sidecar.is_temp_name(name):
                        continue
                    if len(order) >= MAX_ITEMS:
                        self.truncated = True
                        break
                    record, caption = self._sidecars(name, names, index)
                    if record is None and held is None:
                        held = _held_problem(ctx, path)
                    key = path.relative_to(root).as_posix()
                    item = _item(number, key, record, caption, held, names[name])
                    items[item.id] = item
                    order.append(item.id)
        self._files = {k: v for k, v in self._files.items() if k in self._touched}
        order.sort(key=lambda i: (items[i].root, items[i].key))
        self._items, self._order, self._built = items, order, self._clock()

    def _sidecars(
        self, name: str, names: dict[str, os.DirEntry[str]], index: sidecar.FolderIndex
    ) -> tuple[dict[str, Any] | None, _Caption | None]:
        """The image's promptd record (if any) and its caption file."""
        stem_txt, stem_json = sidecar.sidecar_names(name, "stem", index, ())
        record = None
        for candidate in dict.fromkeys((stem_json, f"{name}.json")):
            doc = self._parsed(names.get(candidate), sidecar.read_sidecar)
            if isinstance(doc, dict) and (doc.get("image") or {}).get("file") == name:
                record = doc
                break
        naming = ((record or {}).get("rule") or {}).get("settings", {}).get("naming", "stem")
        txt_name = f"{name}.txt" if naming == "filename" else stem_txt
        caption = self._parsed(names.get(txt_name), _read_caption)
        return record, caption

    def _parsed(self, entry: os.DirEntry[str] | None, read: Callable[[str], Any]) -> Any:
        """``read(entry.path)`` for a regular file, cached by its size and mtime."""
        if entry is None:
            return None
        self._touched.add(entry.path)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return None
        signature = (st.st_size, st.st_mtime_ns)
        cached = self._files.get(entry.path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        value = read(entry.path) if stat.S_ISREG(st.st_mode) else None
        self._files[entry.path] = (signature, value)
        return value


@dataclass(frozen=True)
class _Caption:
    """A .txt as the index keeps it: its name, its text (cut) and the hash of its bytes."""

    name: str
    text: str
    sha256: str


def _read_caption(path: str) -> _Caption | None:
    try:
        with open(path, "rb") as handle:  # noqa: PTH123 - one small read per caption
            data = handle.read(_CAP_BYTES + 1)
    except OSError:
        return None
    text = data[:_CAP_BYTES].decode("utf-8", errors="replace").strip()[:CAPTION_CHARS]
    digest = hashlib.sha256(data).hexdigest() if len(data) <= _CAP_BYTES else ""
    return _Caption(Path(path).name, text, digest)


def _held_problem(ctx: Context, path: Path) -> str:
    """The rule problem holding ``path``'s folder, or "" when its rule is valid."""
    try:
        ctx.rules.resolve(path)
    except ConfigError as exc:
        return str(exc)
    return ""


def _item(
    root: int,
    key: str,
    record: dict[str, Any] | None,
    caption: _Caption | None,
    held: str | None,
    entry: os.DirEntry[str],
) -> Item:
    status: Status = "pending"
    reason = None
    if record is not None:
        if record.get("status") in STATUSES:
            status = record["status"]
        err = record.get("error") or {}
        reason = record.get("degraded_reason") or (err.get("message") if err else None)
    elif held:
        status, reason = "held", held
    outputs = (record or {}).get("outputs") or {}
    owner: Literal["promptd", "user", "none"] = "none"
    if caption is not None:
        ours = outputs.get("txt") == caption.name and outputs.get("txt_sha256") == caption.sha256
        owner = "promptd" if ours else "user"
    text = caption.text if caption is not None else str((record or {}).get("prompt") or "")
    try:
        mtime = entry.stat(follow_symlinks=False).st_mtime_ns
    except OSError:
        mtime = 0
    return Item(
        id=item_id(root, key),
        root=root,
        key=key,
        status=status,
        caption=text,
        owner=owner,
        mode=(record or {}).get("mode"),
        reason=reason,
        mtime_ns=mtime,
        txt=caption.name if caption is not None else None,
    )
