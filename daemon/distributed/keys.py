"""An image's key on the wire: inbox name, path relative to it, and the size and mtime seen.

A key arrives from the broker, so it is untrusted: ``key_from_message`` checks its shape,
types and sizes, and refuses relative paths that are absolute, climb out with ``..``, hold a
NUL or an empty or ``.`` part. Where the path then lands on this machine is checked by
``daemon.distributed.inboxes.local_path`` (symlinks out of the inbox).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from daemon.config.distributed import INBOX_NAME
from daemon.errors import PromptdError

MAX_PATH_BYTES = 4096  # PATH_MAX on Linux
MAX_MESSAGE_BYTES = 16 * 1024  # a key is well under 5 KB; anything bigger is not ours
_FIELDS = frozenset({"inbox", "path", "size", "mtime_ns"})
_MAX_INT = 2**63 - 1


class BadKey(PromptdError):
    """A message from the broker that is not a valid image key (it is dropped)."""

    kind = "bad_message"


@dataclass(frozen=True)
class ImageKey:
    """Which image, on which shared inbox, as the producer saw it."""

    inbox: str
    path: str  # relative to the inbox, "/"-separated, possibly with surrogate escapes
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        """``inbox/relative/path``: how logs and status name the image on every machine."""
        return f"{self.inbox}/{self.path}"

    @property
    def digest(self) -> str:
        """A fixed-length id for Redis key names (paths may be 4 KB long)."""
        raw = self.name.encode("utf-8", "surrogateescape")
        return hashlib.sha256(raw).hexdigest()[:32]

    def to_message(self) -> dict[str, Any]:
        """The JSON-ready form sent to the broker."""
        return {
            "inbox": self.inbox,
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
        }


def relative_problem(path: str) -> str | None:
    """Why ``path`` is not an acceptable path inside an inbox; None when it is."""
    if not path:
        return "empty path"
    if "\0" in path:
        return "path contains a NUL character"
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes"
    if path.startswith("/"):
        return "absolute path"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "path has an empty, '.' or '..' part"
    return None


def key_from_message(payload: Any) -> ImageKey:
    """The key in a task's payload; raises ``BadKey`` saying what is wrong with it."""
    if not isinstance(payload, dict):
        raise BadKey(f"expected an object, got {type(payload).__name__}")
    if set(payload) != _FIELDS:
        extra = sorted(str(k)[:40] for k in set(payload) ^ _FIELDS)
        raise BadKey(f"expected exactly the fields {sorted(_FIELDS)}; differs in {extra}")
    inbox, path = payload["inbox"], payload["path"]
    size, mtime_ns = payload["size"], payload["mtime_ns"]
    if not isinstance(inbox, str) or not INBOX_NAME.match(inbox):
        raise BadKey(f"invalid inbox name {str(inbox)[:70]!r}")
    if not isinstance(path, str):
        raise BadKey(f"path must be a string, got {type(path).__name__}")
    try:
        path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise BadKey("path is not a file name (unpaired surrogates)") from exc
    problem = relative_problem(path)
    if problem is not None:
        raise BadKey(f"refused path {path[:200]!r}: {problem}")
    for field, value in (("size", size), ("mtime_ns", mtime_ns)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
            raise BadKey(f"{field} must be a non-negative integer, got {str(value)[:40]!r}")
    return ImageKey(inbox, path, size, mtime_ns)
