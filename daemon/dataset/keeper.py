"""The daemon's manifests: each folder whose rule sets ``manifests`` keeps them current.

The worker and the watcher callbacks ``note`` every image path they finish, move or delete;
that only marks the folder that owns the image's manifests (the nearest folder whose rule
sets ``manifests``). The main loop calls ``flush_due``: a marked folder is rebuilt (a linear
walk, mostly stat calls thanks to the row cache) and written atomically, at most once every
``watch.manifest_interval_s``, so a burst of 10,000 images costs a few rewrites, not 10,000.
Every ``watch.rescan_interval_s`` all known manifest folders are rebuilt anyway, which catches
what no event reported (deletions while the daemon was down, say).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from daemon.config import Config
from daemon.config.rules import RuleResolver, rule_files_under
from daemon.dataset.formats import FILE_NAMES, Format, build
from daemon.dataset.rows import RowCache, scan_rows
from daemon.errors import PromptdError
from daemon.fs.atomic import write_atomic

log = structlog.get_logger("promptd.dataset")
KEY = "manifests"


class ManifestKeeper:
    """Marks folders whose manifests changed and rewrites them, debounced per folder."""

    def __init__(
        self,
        config: Callable[[], Config],
        rules: Callable[[], RuleResolver],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._rules = rules
        self._clock = clock
        self._lock = threading.Lock()
        self._dirty: dict[Path, tuple[Format, ...]] = {}
        self._known: dict[Path, tuple[Format, ...]] = {}
        self._written: dict[Path, float] = {}
        self._caches: dict[Path, RowCache] = {}
        self._next_refresh = clock() + config().watch.rescan_interval_s
        self.rewrites = 0  # manifest folders rebuilt so far

    def note(self, path: Path) -> None:
        """An image at ``path`` was written, moved or deleted: mark its manifest folder."""
        try:
            origin = self._rules().origin_of(path.parent, KEY)
        except (OSError, PromptdError):
            return
        if origin is not None and origin[1]:
            with self._lock:
                self._dirty[origin[0]] = tuple(origin[1])
                self._known[origin[0]] = tuple(origin[1])

    def discover(self) -> None:
        """Mark every folder under the inboxes that keeps manifests (at start)."""
        config, rules = self._config(), self._rules()
        for root in rules.roots:
            folders: Iterable[Path] = (
                p.parent for p in rule_files_under(root, config.images.ignore)
            )
            for folder in (root, *folders):
                origin = rules.origin_of(folder, KEY)
                if origin is not None and origin[0] == folder and origin[1]:
                    with self._lock:
                        self._dirty[folder] = self._known[folder] = tuple(origin[1])

    def flush_due(self) -> int:
        """Rewrite the marked folders whose last rewrite is old enough; returns how many."""
        now = self._clock()
        interval = self._config().watch.manifest_interval_s
        with self._lock:
            if now >= self._next_refresh:
                self._next_refresh = now + self._config().watch.rescan_interval_s
                self._dirty.update(self._known)
            due = {
                folder: formats
                for folder, formats in self._dirty.items()
                if now - self._written.get(folder, float("-inf")) >= interval
            }
            for folder in due:
                del self._dirty[folder]
                self._written[folder] = now
        for folder, formats in due.items():
            self.rebuild(folder, formats)
        return len(due)

    def flush_all(self) -> None:
        """Rewrite every marked folder now (at stop)."""
        with self._lock:
            due, self._dirty = self._dirty, {}
        for folder, formats in due.items():
            self.rebuild(folder, formats)

    def rebuild(self, folder: Path, formats: tuple[Format, ...]) -> None:
        """Write ``folder``'s manifests from its records now; failures are logged, not raised."""
        started = time.perf_counter()
        config, rules = self._config(), self._rules()
        cache = self._caches.setdefault(folder, RowCache())
        try:
            rows = scan_rows(
                folder,
                config.images.extensions,
                ignore=config.images.ignore,
                prune=lambda sub: rules.setting_in(sub, KEY) is not None,
                cache=cache,
            )
            for fmt in formats:
                write_atomic(folder / FILE_NAMES[fmt], build(fmt, rows, folder))
        except (OSError, PromptdError) as exc:
            log.warning("manifests_not_written", folder=str(folder), error=str(exc))
            return
        except Exception:  # a bug here must not stop the main loop
            log.exception("manifests_crashed", folder=str(folder))
            return
        self.rewrites += 1
        log.info(
            "manifests_written",
            folder=str(folder),
            formats=list(formats),
            images=len(rows),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
