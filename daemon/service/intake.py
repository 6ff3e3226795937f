"""Paths into the queue: the scanner thread, and the watcher whose callbacks feed it.

The watcher releases files once they are complete; the scanner finds what events missed
(the start-up scan, a rescan every ``watch.rescan_interval_s``, and rescans asked for after
an overflow, an observer restart, a rule change or Ollama coming back). Moves and deletes
carry the sidecars along (``daemon.watch.follow``). The filesystem stays the truth: a path
dropped here is found again by the next scan.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from daemon.errors import ConfigError
from daemon.pipeline import is_candidate
from daemon.service.live import Live
from daemon.service.tally import Tally
from daemon.watch import follow
from daemon.watch.scan import pending_images
from daemon.watch.watcher import Watcher

log = structlog.get_logger("promptd.service")


class PathSink(Protocol):
    """Where found images go: the in-process ``JobQueue``, or the broker when several
    machines share the work (``daemon.distributed.sink.BrokerSink``)."""

    def put(self, path: Path) -> bool: ...

    def put_wait(self, path: Path, stop: threading.Event) -> bool: ...


class Intake:
    """Owns the watcher and the scanner thread; both put paths into ``jobs``."""

    def __init__(
        self,
        live: Live,
        jobs: PathSink,
        tally: Tally,
        on_change: Callable[[Path], None] | None = None,
    ) -> None:
        self._live = live
        self._jobs = jobs
        self._tally = tally
        self._on_change = on_change or (lambda path: None)  # an image moved or was deleted
        self._requests: queue.Queue[tuple[Path | None, bool]] = queue.Queue()
        self.watcher: Watcher | None = None
        self.thread = threading.Thread(target=self._scan_loop, name="promptd-scan", daemon=True)

    def enqueue(self, path: Path) -> None:
        """A settled file, or one a scan found: queue it (the queue drops duplicates)."""
        self._jobs.put(path)

    def request_scan(self, folder: Path | None, *, redo_degraded: bool, reason: str = "") -> None:
        """Ask the scanner to look at a folder (None: every inbox)."""
        if reason:
            log.info("rescan_requested", reason=reason)
        self._requests.put((folder, redo_degraded))

    # --- the watcher ----------------------------------------------------------------------

    def restart_watcher(self) -> None:
        """(Re)start the watcher with the current config's inboxes and settings."""
        self.stop_watcher()
        config = self._live.config
        self.watcher = Watcher(
            list(config.inbox),
            config.watch,
            is_candidate=lambda p: is_candidate(p, self._live.config),
            on_ready=self.enqueue,
            on_rule_change=lambda folder: self.request_scan(folder, redo_degraded=False),
            on_removed=self._on_removed,
            on_moved=self._on_moved,
            needs_rescan=lambda reason: self.request_scan(None, redo_degraded=False, reason=reason),
            ignore=config.images.ignore,
        )
        self.watcher.start()

    def stop_watcher(self) -> None:
        """Stop the watcher, if one runs."""
        if self.watcher is not None:
            self.watcher.stop()

    def watcher_healthy(self) -> bool:
        """The watcher runs and its observers are alive."""
        return self.watcher is not None and self.watcher.healthy()

    def _on_removed(self, path: Path) -> None:
        if is_candidate(path, self._live.config):
            follow.remove_for(path)
            self._on_change(path)

    def _on_moved(self, src: Path, dest: Path) -> None:
        config, rules = self._live.config, self._live.ctx.rules
        if not is_candidate(src, config):
            return
        self._on_change(src)
        if rules.root_of(dest) is None or not is_candidate(dest, config):
            follow.remove_for(src)
            return
        try:
            naming = rules.resolve(dest).settings.naming
        except ConfigError:
            return
        follow.move_for(src, dest, naming, config.images.extensions)
        self.enqueue(dest)

    # --- the scanner ----------------------------------------------------------------------

    def _scan_loop(self) -> None:
        live = self._live
        next_full = time.monotonic() + live.config.watch.rescan_interval_s
        while not live.stop.is_set():
            try:
                folder, redo = self._requests.get(timeout=max(0.0, next_full - time.monotonic()))
            except queue.Empty:
                folder, redo = None, live.ollama_up is True
                next_full = time.monotonic() + live.config.watch.rescan_interval_s
            try:
                self._scan(folder, redo)
            except Exception:  # the scanner must outlive a bad folder
                log.exception("scan_crashed", folder=str(folder))

    def _scan(self, folder: Path | None, redo_degraded: bool) -> None:
        started = time.perf_counter()
        live = self._live
        roots = [folder] if folder is not None else list(live.config.inbox)
        found = 0
        for root in roots:
            for path in pending_images(
                root, live.ctx, redo_degraded=redo_degraded, on_symlink=self._on_symlink
            ):
                if live.stop.is_set():
                    return
                if self.watcher is not None and self._maybe_still_written(path):
                    self.watcher.hint(path)  # released once it has settled
                else:
                    self._jobs.put_wait(path, live.stop)
                found += 1
        if folder is not None:
            self._tally.release_held(folder)
        log.info(
            "scan_done",
            folders=[str(r) for r in roots],
            pending=found,
            ms=round((time.perf_counter() - started) * 1000),
        )

    def _on_symlink(self, path: Path) -> None:
        """A link found by a scan: never followed; said once per link per run."""
        if self._tally.note_symlink(path):
            log.warning(
                "symlink_not_followed",
                path=str(path),
                hint="promptd never follows links (one could lead outside the inbox); "
                "copy the images into the inbox instead",
            )

    def _maybe_still_written(self, path: Path) -> bool:
        """Modified less than `watch.settle_s` ago: a scan must not read it half-written."""
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False
        return age < self._live.config.watch.settle_s
