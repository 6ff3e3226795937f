"""Images in hand during a crash: remembered across restarts, quarantined after two.

While the worker holds images, their paths (with size and mtime) are in
``<state_dir>/in-hand.json``, rewritten when a batch is taken and as each image is finished
(a rename, no fsync: it must survive the process, not the machine). A clean stop empties it.
So at start, any path still listed was in hand when promptd crashed, was killed by the
watchdog, or ran out of memory. ``recover`` adds one to its crash count in
``<state_dir>/crashes.json`` (keyed by path, size and mtime_ns: a changed file starts
afresh), and returns the paths that reached ``CRASH_LIMIT`` consecutive crashes: the
service writes their error record (``status: "error"``, kind ``quarantined``), which keeps
them from being tried again until the file changes. A path with one crash is a *suspect*:
the worker processes it alone, so a second crash is pinned on the right image rather than
on its batch-mates; finishing it clears its count.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog

from daemon.errors import PromptdError
from daemon.fs.atomic import write_atomic
from daemon.pipeline import Context, write_quarantined
from daemon.records import Result

log = structlog.get_logger("promptd.service")

IN_HAND_FILE = "in-hand.json"
CRASHES_FILE = "crashes.json"
CRASH_LIMIT = 2
Key = tuple[str, int, int]  # path, size, mtime_ns


def file_key(path: Path) -> Key:
    """The path with its size and mtime_ns now; (-1, -1) when it cannot be stat'ed."""
    try:
        st = path.stat(follow_symlinks=False)
    except OSError:
        return str(path), -1, -1
    return str(path), st.st_size, st.st_mtime_ns


def _read_entries(path: Path, schema: str) -> list[dict[str, Any]]:
    """The entries of one of our state files; none when it is missing or unreadable."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        return []
    entries = doc.get("entries")
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _key(entry: dict[str, Any]) -> Key | None:
    path, size, mtime = entry.get("path"), entry.get("size"), entry.get("mtime_ns")
    if isinstance(path, str) and isinstance(size, int) and isinstance(mtime, int):
        return path, size, mtime
    return None


def _dump(schema: str, entries: list[dict[str, Any]]) -> bytes:
    # ensure_ascii keeps a non-UTF-8 name's surrogates as \\udcXX escapes (read back exactly).
    return json.dumps({"schema": schema, "entries": entries}, ensure_ascii=True).encode()


class Quarantine:
    """The in-hand file and the crash counts of one service's state folder."""

    def __init__(self, state_dir: Path) -> None:
        self._in_hand_path = state_dir / IN_HAND_FILE
        self._crashes_path = state_dir / CRASHES_FILE
        self._lock = threading.Lock()
        self._held: dict[str, Key] = {}
        self._suspects: dict[str, tuple[Key, int]] = {}

    # --- at start ------------------------------------------------------------------------

    def recover(self) -> list[tuple[Path, int]]:
        """Count a crash for every path left in hand (if unchanged since) and return those
        that reached ``CRASH_LIMIT`` with their counts; the rest become suspects. A path not
        in hand this time has its streak broken. Call once, before the worker starts."""
        previous = {
            key: int(e.get("crashes", 0))
            for e in _read_entries(self._crashes_path, "promptd.crashes/1")
            if (key := _key(e)) is not None
        }
        counts: dict[Key, int] = {}
        for entry in _read_entries(self._in_hand_path, "promptd.in-hand/1"):
            key = _key(entry)
            if key is not None and file_key(Path(key[0])) == key:
                counts[key] = previous.get(key, 0) + 1
        quarantined = [(Path(k[0]), n) for k, n in counts.items() if n >= CRASH_LIMIT]
        with self._lock:
            self._suspects = {k[0]: (k, n) for k, n in counts.items() if n < CRASH_LIMIT}
            self._save_crashes()
            self._held = {}
            self._save_in_hand()
        return quarantined

    # --- while running -------------------------------------------------------------------

    def is_suspect(self, path: Path) -> bool:
        """True when ``path`` (unchanged) was in hand during the last crash."""
        with self._lock:
            found = self._suspects.get(str(path))
        return found is not None and file_key(path) == found[0]

    def hold(self, paths: Iterable[Path]) -> None:
        """The worker takes ``paths``."""
        with self._lock:
            for path in paths:
                self._held[str(path)] = file_key(path)
            self._save_in_hand()

    def release(self, paths: Iterable[Path]) -> None:
        """The worker is done with ``paths`` (whatever the outcome): a suspect is cleared."""
        with self._lock:
            names = [str(path) for path in paths]
            released = [name for name in names if self._held.pop(name, None) is not None]
            cleared = [name for name in names if self._suspects.pop(name, None) is not None]
            if released:
                self._save_in_hand()
            if cleared:
                self._save_crashes()

    def clear(self) -> None:
        """A clean stop: nothing was in hand during a crash."""
        with self._lock:
            self._held = {}
            self._save_in_hand()

    # --- files ---------------------------------------------------------------------------

    def _save_in_hand(self) -> None:
        entries = [{"path": k[0], "size": k[1], "mtime_ns": k[2]} for k in self._held.values()]
        data = _dump("promptd.in-hand/1", entries)
        temp = self._in_hand_path.with_name(f".{IN_HAND_FILE}.{os.getpid()}")
        try:
            self._in_hand_path.parent.mkdir(parents=True, exist_ok=True)
            temp.write_bytes(data)
            temp.replace(self._in_hand_path)  # whole or not at all, even if we are killed now
        except OSError as exc:  # the images matter more than the bookkeeping
            log.warning("in_hand_not_saved", file=str(self._in_hand_path), error=str(exc))

    def _save_crashes(self) -> None:
        entries = [
            {"path": k[0], "size": k[1], "mtime_ns": k[2], "crashes": n}
            for k, n in self._suspects.values()
        ]
        try:
            self._crashes_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self._crashes_path, _dump("promptd.crashes/1", entries))
        except (OSError, PromptdError) as exc:
            log.warning("crash_counts_not_saved", file=str(self._crashes_path), error=str(exc))


def quarantine_crashed(
    quarantine: Quarantine, ctx: Context, record: Callable[[Result], object]
) -> None:
    """At start, before any thread: count the crash for what was in hand when promptd last
    died, and write the error record of each image in hand during two crashes in a row."""
    for path, crashes in quarantine.recover():
        reason = (
            f"promptd crashed or hung {crashes} times in a row while processing this image "
            "(killed, out of memory, or stuck past watch.stuck_after_s); it is not tried "
            "again until the file changes"
        )
        try:
            result = write_quarantined(path, ctx, reason)
        except PromptdError as exc:
            log.error("quarantine_not_written", path=str(path), error=str(exc))
            continue
        record(result)
        log.error("image_quarantined", path=str(path), crashes=crashes, outcome=result.outcome)
