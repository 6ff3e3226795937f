"""Noticing files in the inbox: supervised watchdog observers feeding the Settler.

One recursive observer per inbox root: inotify normally, polling where inotify cannot see
changes (`watch.mode: polling`, or `auto` on NFS/SMB/SSHFS/FUSE, also for such a share
mounted below a local root) or where inotify's limits are used up (ENOSPC/EMFILE at start).
The observer's handler only appends the event to an in-memory list, so a slow or failing
callback can never stall or kill it (watchdog#427). The watcher's own thread interprets
the events, asks the Settler when each file is complete, and calls back:

- ``on_ready(path)``: a candidate image is complete; queue it.
- ``on_rule_change(folder)``: rules at or below ``folder`` may have changed: its
  ``.promptd.yaml`` was written (once settled), deleted, or moved, or a folder holding rule
  files moved in, out or within the inbox.
- ``on_removed(path)``: a candidate image was deleted or moved out of the inbox (or into an
  ignored folder, or renamed to a name that is not an image).
- ``on_moved(src, dest)``: a candidate image was renamed within the inbox (``dest`` is also
  released through ``on_ready`` once settled), or a folder was (its contents and their
  sidecars moved with it; every candidate inside is released again too).
- ``needs_rescan(reason)``: events may have been lost (an observer was restarted, the inotify
  queue overflowed); rescan everything.

Every callback runs on the watcher's one thread, one at a time; each should be quick (a
slow one delays the others, never the observers) and may see the same path twice. A file
renamed into a folder created a moment before may be reported as removed and new rather
than moved (inotify had no watch on the folder yet); the end state is the same.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent
from watchdog.observers.api import BaseObserver

from daemon.config import WatchSettings
from daemon.errors import ConfigError
from daemon.fs.names import RULE_FILE
from daemon.fs.treewalk import is_ignored_path, scan
from daemon.watch.eventmap import Action, actions_for
from daemon.watch.observers import (
    ObservedFolder,
    ObserverFactory,
    ObserverKind,
    OverflowAlarm,
    inotify_folder_count,
    make_observer,
    plan_folders,
    stop_observer,
    warn_if_inotify_limit_low,
)
from daemon.watch.settle import Settler

__all__ = ["Watcher", "scan"]

log = structlog.get_logger("promptd.watcher")
_OVERFLOW = "inotify queue overflowed: events were lost"


class Watcher:
    """Watches inbox roots and calls back when files are complete; see the module docstring.

    `is_candidate(path)` decides by name whether a file is an image to handle (no stat);
    `ignore` adds glob patterns for file and folder names (config `images.ignore`).
    `observer_factory` and `mounts_text` (a /proc/mounts text) exist for tests.
    """

    def __init__(
        self,
        roots: Sequence[Path],
        settings: WatchSettings,
        *,
        is_candidate: Callable[[Path], bool],
        on_ready: Callable[[Path], None],
        on_rule_change: Callable[[Path], None],
        on_removed: Callable[[Path], None],
        on_moved: Callable[[Path, Path], None],
        needs_rescan: Callable[[str], None],
        ignore: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        observer_factory: ObserverFactory = make_observer,
        mounts_text: str | None = None,
        supervise_s: float = 1.0,
        stall_s: float = 60.0,
    ) -> None:
        self.roots = tuple(Path(root).absolute() for root in roots)
        self.settings = settings
        self._is_candidate = is_candidate
        self._on_ready = on_ready
        self._on_rule_change = on_rule_change
        self._on_removed = on_removed
        self._on_moved = on_moved
        self._needs_rescan = needs_rescan
        self._ignore = tuple(ignore)
        self._clock = clock
        self._factory = observer_factory
        self._mounts_text = mounts_text
        self._supervise_s = supervise_s
        self._stall_s = stall_s
        self._settler = Settler(settings.quiet_s, settings.settle_s)
        # Filled by observer threads and `hint`, emptied by the settle thread (deque
        # appends and pops are atomic): an event, a weak hint, or a rescan reason.
        self._events: deque[tuple[Path, FileSystemEvent] | Path | str] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._folders: list[ObservedFolder] = []
        self._thread: threading.Thread | None = None
        self._alarm = OverflowAlarm(lambda: self._push(_OVERFLOW))
        self._beat = 0.0

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the observers and the settle thread; warn when inotify's watch limit is too
        low. Raises ConfigError when a root cannot be watched at all (missing, unreadable)."""
        if self._thread is not None:
            return
        self._folders = plan_folders(self.roots, self.settings.mode, self._mounts_text)
        warn_if_inotify_limit_low(self._folders)
        self._alarm.install()
        for folder in self._folders:
            try:
                folder.start(self._factory, self.settings.poll_interval_s, self._push_event)
            except OSError as exc:
                self.stop()
                raise ConfigError(
                    f"cannot watch this folder: {exc.strerror or exc}; check that it exists "
                    "and that promptd's user may read it",
                    folder.folder,
                ) from exc
        self._beat = self._clock()
        self._thread = threading.Thread(target=self._run, name="promptd-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the settle thread and every observer. Files still settling are dropped (the
        next start-up scan finds them again)."""
        self._stopping.set()
        self._wake.set()
        self._alarm.remove()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        observers = self.observers()
        for observer in observers:
            stop_observer(observer, join_s=0)
        for observer in observers:
            observer.join(timeout)

    def healthy(self) -> bool:
        """Every observer and the settle thread are alive, and the settle loop is turning."""
        thread = self._thread
        if thread is None or not thread.is_alive() or self._stopping.is_set():
            return False
        if self._clock() - self._beat > self._stall_s:
            return False
        return all(folder.alive() for folder in self._folders)

    def modes(self) -> dict[Path, ObserverKind]:
        """Which kind of observer watches each folder (for logs and `promptd status`)."""
        return {folder.folder: folder.kind for folder in self._folders}

    def observers(self) -> list[BaseObserver]:
        """The observers now running, one per watched folder."""
        return [f.observer for f in self._folders if f.observer is not None]

    def pending(self) -> int:
        """Files waiting to be complete (read without a lock: approximate)."""
        return self._settler.pending()

    def folder_count(self) -> int:
        """Folders the inotify observers watch (one inotify watch each)."""
        return inotify_folder_count(self._folders)

    def hint(self, path: Path) -> None:
        """Release `path` through `on_ready` once it is complete (e.g. a file a rescan found
        that was modified moments ago). A weak hint; safe from any thread."""
        self._push(Path(path).absolute())

    # --- the settle thread -----------------------------------------------------------------

    def _push(self, item: Path | str) -> None:
        self._events.append(item)
        self._wake.set()

    def _push_event(self, inbox: Path, event: FileSystemEvent) -> None:
        self._events.append((inbox, event))
        self._wake.set()

    def _run(self) -> None:
        next_check = self._clock() + self._supervise_s
        while not self._stopping.is_set():
            self._beat = now = self._clock()
            try:
                self._drain()
                self._release(self._clock())
                if now >= next_check:
                    self._supervise(now)
                    next_check = now + self._supervise_s
            except Exception:
                log.exception("watcher_loop_error")
            self._wake.wait(self._sleep_s(next_check))
            self._wake.clear()

    def _sleep_s(self, next_check: float) -> float:
        deadline = self._settler.next_deadline()
        until = next_check if deadline is None else min(next_check, deadline)
        return min(max(until - self._clock(), 0.005), self._supervise_s)

    def _drain(self) -> None:
        while self._events:
            item = self._events.popleft()
            try:
                if isinstance(item, str):
                    self._call(self._needs_rescan, item)
                elif isinstance(item, Path):
                    if self._wanted(item, False):
                        self._settler.hint(item, False, self._clock())
                else:
                    self._interpret(*item)
            except Exception:
                log.exception("watch_event_failed", item=repr(item))

    def _interpret(self, inbox: Path, event: FileSystemEvent) -> None:
        for action in actions_for(event, lambda path, is_dir: self._wanted(path, is_dir, inbox)):
            self._apply(action)

    def _wanted(self, path: Path, is_dir: bool, inbox: Path | None = None) -> bool:
        if inbox is None:
            inbox = next((r for r in self.roots if path.is_relative_to(r)), None)
        if inbox is None or is_ignored_path(path, inbox, extra=self._ignore):
            return False
        return is_dir or path.name == RULE_FILE or self._is_candidate(path)

    def _apply(self, action: Action) -> None:
        kind, path = action.kind, action.path
        if kind == "hint":
            self._settler.hint(path, action.strong, self._clock())
        elif kind == "forget":
            self._settler.forget(path)
        elif kind == "forget_under":
            self._settler.forget_under(path)
        elif kind == "walk":
            self._walk(path, action.strong, action.other)
        elif kind == "removed":
            self._call(self._on_removed, path)
        elif kind == "moved" and action.other is not None:
            self._call(self._on_moved, path, action.other)
        elif kind == "rules":
            self._call(self._on_rule_change, path)

    def _walk(self, folder: Path, strong: bool, moved_from: Path | None) -> None:
        """Hint every candidate in a folder that appeared; report rule files it brought."""
        found_rules = False
        now = self._clock()
        for path in scan(
            folder, is_candidate=self._is_candidate, ignore=self._ignore, rule_files=True
        ):
            if path.name == RULE_FILE and strong:
                found_rules = True  # renamed in whole: complete already
            else:
                self._settler.hint(path, strong, now)
        if found_rules:
            for changed in (moved_from, folder):
                if changed is not None:
                    self._call(self._on_rule_change, changed)

    def _release(self, now: float) -> None:
        for path in self._settler.due(now):
            if path.name == RULE_FILE:
                self._call(self._on_rule_change, path.parent)
            else:
                self._call(self._on_ready, path)

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("watch_callback_failed", callback=getattr(callback, "__name__", "?"))

    def _supervise(self, now: float) -> None:
        """Restart dead observers (their threads die silently: watchdog#427, #793; an emitter
        stops when its folder is deleted), then ask for a rescan."""
        for folder in self._folders:
            if folder.revive(now, self._factory, self.settings.poll_interval_s, self._push_event):
                self._call(self._needs_rescan, f"observer restarted: {folder.folder}")
