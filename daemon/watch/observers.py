"""The watchdog observers behind the watcher: which kind per folder, starting and stopping.

inotify normally; polling where inotify cannot see changes (`watch.mode: polling`, or `auto`
on NFS/SMB/SSHFS/FUSE, also for such a share mounted below a local inbox) or where its
limits are used up (ENOSPC/EMFILE when the observer starts: watchdog#673, #846). The
handler only passes each event on: a failing callback must not kill the observer's
thread (watchdog#427, #793), and slow work must not stall dispatch.
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from daemon.fs.treewalk import count_folders
from daemon.watch import fsinfo

log = structlog.get_logger("promptd.watcher")

ObserverKind = Literal["inotify", "polling"]
ObserverFactory = Callable[[ObserverKind, float], BaseObserver]
EventSink = Callable[[Path, FileSystemEvent], None]
LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE})
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"  # where watchdog reports a queue overflow
# The events promptd acts on. Leaving out opened and closed-without-writing keeps IN_OPEN and
# IN_CLOSE_NOWRITE out of the inotify mask; with them, every file promptd reads itself (each
# image it analyses, each .json a scan checks) came back as two events to parse and drop,
# which made a scan of an up-to-date tree twice as slow.
WANTED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
]


def choose_kind(mode: str, fstype: str) -> ObserverKind:
    """The observer for a folder: `watch.mode`, or for `auto` polling on network filesystems."""
    if mode == "polling" or (mode == "auto" and fsinfo.is_network_fs(fstype)):
        return "polling"
    return "inotify"


def make_observer(kind: ObserverKind, poll_interval_s: float) -> BaseObserver:
    """A new observer: the platform's native one ("inotify" on Linux) or a polling one."""
    if kind == "polling":
        return PollingObserver(timeout=poll_interval_s)
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        # Full events: a file or folder moved in from outside arrives as a move with an
        # empty source, so it is told apart from one that is still being written.
        return InotifyObserver(generate_full_events=True)
    from watchdog.observers import Observer

    return Observer()


class _Handler(FileSystemEventHandler):
    """Runs on the observer's thread: hands the event over and returns at once."""

    def __init__(self, inbox: Path, sink: EventSink) -> None:
        self._inbox = inbox
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._sink(self._inbox, event)
        except Exception:
            log.exception("watch_event_dropped", event=repr(event))


@dataclass
class ObservedFolder:
    """One watched folder (an inbox root, or a network share mounted below one) and its
    observer, restartable."""

    folder: Path
    inbox: Path
    kind: ObserverKind
    observer: BaseObserver | None = None
    retry_at: float = 0.0
    backoff_s: float = 1.0

    def alive(self) -> bool:
        """The observer thread and all its emitters run (an emitter stops on its own when
        the folder is deleted)."""
        obs = self.observer
        return obs is not None and obs.is_alive() and all(e.is_alive() for e in obs.emitters)

    def start(self, factory: ObserverFactory, poll_interval_s: float, sink: EventSink) -> None:
        """Start a fresh observer; inotify out of watches or instances falls back to polling.
        Other OSErrors (folder missing, unreadable) are raised."""
        try:
            self.observer = self._new(factory, poll_interval_s, sink)
        except OSError as exc:
            if self.kind != "inotify" or exc.errno not in LIMIT_ERRNOS:
                raise
            log.warning(
                "inotify_unavailable_polling",
                folder=str(self.folder),
                error=str(exc),
                fix="raise fs.inotify.max_user_watches and max_user_instances (see the README)",
            )
            self.kind = "polling"
            self.observer = self._new(factory, poll_interval_s, sink)

    def _new(
        self, factory: ObserverFactory, poll_interval_s: float, sink: EventSink
    ) -> BaseObserver:
        observer = factory(self.kind, poll_interval_s)
        try:
            observer.schedule(
                _Handler(self.inbox, sink),
                str(self.folder),
                recursive=True,
                event_filter=WANTED_EVENTS,
            )
            observer.start()
        except BaseException:
            stop_observer(observer, join_s=1.0)
            raise
        return observer

    def revive(
        self, now: float, factory: ObserverFactory, poll_interval_s: float, sink: EventSink
    ) -> bool:
        """Restart the observer if it died and its retry time has come; True when restarted.

        A failed restart waits twice as long before the next try (at most a minute)."""
        if self.alive() or now < self.retry_at:
            return False
        log.warning("observer_died", folder=str(self.folder), observer=self.kind)
        self.stop(join_s=1.0)
        try:
            self.start(factory, poll_interval_s, sink)
        except OSError as exc:
            self.retry_at = now + self.backoff_s
            self.backoff_s = min(self.backoff_s * 2, 60.0)
            log.error("observer_restart_failed", folder=str(self.folder), error=str(exc))
            return False
        self.backoff_s = 1.0
        log.info("observer_restarted", folder=str(self.folder), observer=self.kind)
        return True

    def stop(self, join_s: float) -> None:
        """Stop the observer (if any) and forget it."""
        if self.observer is not None:
            stop_observer(self.observer, join_s)
            self.observer = None


def stop_observer(observer: BaseObserver, join_s: float) -> None:
    """Ask an observer to stop and wait up to `join_s` for it; never raises."""
    try:
        observer.stop()
        if join_s > 0 and observer.is_alive():
            observer.join(join_s)
    except (OSError, RuntimeError) as exc:
        log.warning("observer_stop_failed", error=str(exc))


def plan_folders(
    roots: Sequence[Path], mode: str, mounts_text: str | None = None
) -> list[ObservedFolder]:
    """One folder per root, plus (in `auto` mode) one polled folder per network share
    mounted below an inotify root (paperless#13146)."""
    folders = []
    for root in roots:
        fstype = fsinfo.mount_fstype(root, mounts_text)
        kind = choose_kind(mode, fstype)
        log.info("watch_planned", folder=str(root), fstype=fstype, observer=kind)
        folders.append(ObservedFolder(root, root, kind))
        if kind == "inotify" and mode == "auto":
            for share in fsinfo.network_submounts(root, mounts_text):
                log.info("watch_planned", folder=str(share), fstype="network", observer="polling")
                folders.append(ObservedFolder(share, root, "polling"))
    return folders


def inotify_folder_count(folders: Sequence[ObservedFolder]) -> int:
    """Folders the inotify observers watch (one inotify watch each)."""
    return sum(count_folders(f.folder) for f in folders if f.kind == "inotify")


def warn_if_inotify_limit_low(folders: Sequence[ObservedFolder]) -> str | None:
    """Log (and return) what to raise when the inotify watch limit is too low for `folders`."""
    if not any(f.kind == "inotify" for f in folders):
        return None
    limit = fsinfo.inotify_limits().get("max_user_watches", 0)
    problem = fsinfo.check_watch_limit(inotify_folder_count(folders), limit)
    if problem is not None:
        log.warning("inotify_limit_low", problem=problem)
    return problem


class OverflowAlarm(logging.Handler):
    """Turns watchdog's "inotify queue overflowed" warning into a call of `alarm`: the
    kernel dropped events (watchdog#654), so only a rescan can find what they said."""

    def __init__(self, alarm: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self._alarm = alarm

    def emit(self, record: logging.LogRecord) -> None:
        """Called by logging for each record at WARNING or above."""
        if "overflow" in record.getMessage().lower():
            self._alarm()

    def install(self) -> None:
        """Listen to watchdog's inotify logger."""
        logging.getLogger(OVERFLOW_LOGGER).addHandler(self)

    def remove(self) -> None:
        """Stop listening."""
        logging.getLogger(OVERFLOW_LOGGER).removeHandler(self)
