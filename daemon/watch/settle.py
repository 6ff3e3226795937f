"""Decide when a file that events point at is completely written.

Events only say "look at this path". The Settler remembers such candidates and releases one
once it looks complete, judged by a stat signature (size, mtime_ns, inode) that must stay the
same across a waiting time:

- **strong hint** (inotify close-after-write, or a rename into place): wait `quiet_s` after
  the last event for the path, then the signature must equal the one taken right after the
  hint. A strong hint refreshes the signature, so a file whose data arrived before the
  close is released `quiet_s` after it.
- **weak hint** (created or modified only: polling, network mounts, writers that reopen the
  file): the signature must stay unchanged for `settle_s`, with no event for `settle_s`.
  A weak hint after a strong one means the file was opened for writing again, so the
  candidate falls back to this rule.
- **empty files** never take the `quiet_s` shortcut: a close right after `touch` or a
  scanner's empty placeholder (paperless#12511) would release them too early. An empty file
  that stays empty for `settle_s` is released (the pipeline records "empty file"; when data
  arrives later, new events release it again).
- only **regular files** are released: a path that became a symlink, a folder or vanished
  (a renamed temp file) is forgotten; a later event or rescan brings it back.

Pure logic with an injected clock (`now`) and `stat`; not thread-safe (the watcher holds a
lock around it). Memory is one small record per file being written.
"""

from __future__ import annotations

import heapq
import itertools
import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Signature = tuple[int, int, int]  # size, mtime_ns, inode
StatFn = Callable[[Path], os.stat_result]


@dataclass
class _Candidate:
    """What the Settler knows about one path."""

    strong: bool
    last_event: float
    sig: Signature | None = None  # None: stat it at the next check
    sig_at: float = 0.0  # when `sig` was first seen
    seq: int = -1  # sequence number of its live heap entry, -1 when none


class Settler:
    """Candidate paths waiting to be complete; see the module docstring for the rules."""

    def __init__(self, quiet_s: float, settle_s: float) -> None:
        if quiet_s < 0 or settle_s < 0:
            raise ValueError("quiet_s and settle_s must not be negative")
        self.quiet_s = quiet_s
        self.settle_s = settle_s
        self._candidates: dict[Path, _Candidate] = {}
        self._heap: list[tuple[float, int, Path]] = []
        self._seq = itertools.count()

    def _wait(self, cand: _Candidate) -> float:
        empty = cand.sig is not None and cand.sig[0] == 0
        return self.quiet_s if cand.strong and not empty else self.settle_s

    def _deadline(self, cand: _Candidate) -> float:
        if cand.sig is None:
            return cand.last_event
        return max(cand.last_event, cand.sig_at) + self._wait(cand)

    def _arm(self, path: Path, cand: _Candidate, deadline: float) -> None:
        cand.seq = next(self._seq)
        heapq.heappush(self._heap, (deadline, cand.seq, path))

    def hint(self, path: Path, strong: bool, now: float) -> None:
        """Note an event for `path`: strong for close-after-write or moved-in, weak otherwise."""
        cand = self._candidates.get(path)
        if cand is None:
            cand = self._candidates[path] = _Candidate(strong=strong, last_event=now)
            self._arm(path, cand, now)
            return
        cand.last_event = max(cand.last_event, now)
        cand.strong = strong
        if strong:
            cand.sig = None  # take a fresh signature right after the close or rename
            self._arm(path, cand, now)
        # A weak hint only moves the deadline later: the live heap entry fires early and is
        # re-armed there, so a burst of modify events costs no heap entries and no stats.

    def forget(self, path: Path) -> None:
        """Stop tracking `path` (deleted, moved away, or handled elsewhere)."""
        self._candidates.pop(path, None)

    def forget_under(self, folder: Path) -> None:
        """Stop tracking every path inside `folder` (a folder deleted or moved away)."""
        for path in [p for p in self._candidates if p.is_relative_to(folder)]:
            del self._candidates[path]

    def pending(self) -> int:
        """How many paths are waiting."""
        return len(self._candidates)

    def next_deadline(self) -> float | None:
        """The earliest time `due` may release or re-check something; None when idle."""
        while self._heap:
            deadline, seq, path = self._heap[0]
            cand = self._candidates.get(path)
            if cand is not None and cand.seq == seq:
                return deadline
            heapq.heappop(self._heap)  # stale entry
        return None

    def due(self, now: float, stat: StatFn = os.lstat) -> list[Path]:
        """Release the paths that are complete at `now`; re-arm those that changed.

        `stat` must not follow symlinks (the default is `os.lstat`): a symlink is never
        released. A path that cannot be stat'ed is forgotten.
        """
        released = []
        while self._heap and self._heap[0][0] <= now:
            _, seq, path = heapq.heappop(self._heap)
            cand = self._candidates.get(path)
            if cand is None or cand.seq != seq:
                continue  # stale entry
            cand.seq = -1
            deadline = self._deadline(cand)
            if deadline > now:  # events moved it later; no need to stat yet
                self._arm(path, cand, deadline)
                continue
            try:
                st = stat(path)
            except OSError:
                del self._candidates[path]
                continue
            if not stat_mod.S_ISREG(st.st_mode):
                del self._candidates[path]
                continue
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            if sig != cand.sig:
                cand.sig, cand.sig_at = sig, now
                self._arm(path, cand, self._deadline(cand))
                continue
            del self._candidates[path]
            released.append(path)
        return released
