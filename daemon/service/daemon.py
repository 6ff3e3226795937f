"""`promptd run`: wires watcher, queue, worker and pipeline together; owns threads and signals.

Threads: the watcher's (events -> settle -> queue), one scanner (start-up scan, periodic and
requested rescans), one worker (batches through the pipeline, the next batch decoded ahead
while the current one is on the GPU), one health poller (brings degraded results back once
Ollama answers again). The main thread handles signals, sd_notify and the status file.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType

import structlog

from daemon import __version__, sidecar
from daemon.config import Config, cache_dir, load_config
from daemon.errors import ConfigError, PromptdError
from daemon.pipeline import Context, Prepared, finish_batch, is_candidate, prepare_batch
from daemon.pipeline.analyze.clip import ClipAnalyzer
from daemon.pipeline.backends import build_context
from daemon.pipeline.compose.client import OllamaLLM
from daemon.records import Result
from daemon.service.gpulock import GpuLock
from daemon.service.queue import JobQueue, RetrySchedule
from daemon.service.sdnotify import Notifier, watchdog_interval
from daemon.service.state import OllamaState, service_state_path, write_state
from daemon.service.tally import Tally
from daemon.watch import follow
from daemon.watch.scan import pending_images
from daemon.watch.watcher import Watcher

log = structlog.get_logger("promptd.service")


class Service:
    """One running daemon; ``run()`` blocks until it is told to stop."""

    def __init__(self, config: Config, config_path: Path | None, environ: dict[str, str]) -> None:
        self.config_path = config_path
        self.environ = environ
        self.notifier = Notifier.from_environ(environ)
        self.gpu = GpuLock(config.gpu.exclusive)
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.scan_requests: queue.Queue[tuple[Path | None, bool]] = queue.Queue()
        self.tally = Tally()
        self.attempts: dict[Path, int] = {}
        self.ollama_up: bool | None = None
        self.degraded_seen = threading.Event()
        self._apply_config(config)
        self.queue = JobQueue(
            config.watch.queue_size,
            schedule=RetrySchedule.default(),
            on_overflow=lambda: self.request_scan(None, redo_degraded=False, reason="queue full"),
        )
        self.watcher: Watcher | None = None
        self.worker = threading.Thread(target=self._work, name="promptd-worker", daemon=True)
        self.scanner = threading.Thread(target=self._scan_loop, name="promptd-scan", daemon=True)
        self.health = threading.Thread(target=self._health_loop, name="promptd-health", daemon=True)

    # --- configuration ------------------------------------------------------------------

    def _apply_config(self, config: Config, analyzer: ClipAnalyzer | None = None) -> None:
        self.config = config
        analyzer = analyzer or ClipAnalyzer(config.clip, cache_dir(config), gpu_lock=self.gpu)
        self.llm = OllamaLLM(config.ollama, gpu_lock=self.gpu)
        self.ctx: Context = build_context(
            config, gpu_lock=self.gpu, analyzer=analyzer, llm=self.llm
        )

    def reload(self) -> None:
        """SIGHUP: load config.yaml again; an invalid file is rejected and the old one stays."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, self.environ)
        except ConfigError as exc:
            log.error("reload_rejected", file=str(exc.path), problems=list(exc.problems))
            self.notifier.ready()
            return
        old = self.config
        same_clip = new.clip == old.clip and new.cache_dir == old.cache_dir
        analyzer = (
            self.ctx.analyzer if same_clip and isinstance(self.ctx.analyzer, ClipAnalyzer) else None
        )
        self._apply_config(new, analyzer)
        if (new.inbox, new.watch, new.images) != (old.inbox, old.watch, old.images):
            self._restart_watcher()
        log.info("config_reloaded", file=str(self.config_path))
        self.request_scan(None, redo_degraded=True)
        self.notifier.ready()

    # --- start and stop ------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, stop cleanly; returns the exit code."""
        self._install_signals()
        self._prepare_inboxes()
        self._warm_up()
        self._restart_watcher()
        self.worker.start()
        self.scanner.start()
        self.health.start()
        self.request_scan(None, redo_degraded=True)
        self.notifier.ready()
        log.info("service_ready", inbox=[str(p) for p in self.config.inbox], version=__version__)
        self._main_loop()
        return self._shutdown()

    def _install_signals(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            if self.stop_event.is_set():
                os._exit(1)  # second signal: leave now; sidecar writes are atomic
            log.info("stopping", signal=signal.Signals(signum).name)
            self.stop_event.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.reload_event.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def _prepare_inboxes(self) -> None:
        for inbox in self.config.inbox:
            inbox.mkdir(parents=True, exist_ok=True)
            swept = sidecar.sweep_temp_files(inbox)
            if swept:
                log.info("temp_files_swept", inbox=str(inbox), count=len(swept))

    def _warm_up(self) -> None:
        """Load the Ollama model first, then CLIP: Ollama falls back to CPU if VRAM is taken."""
        self.notifier.status("loading models")
        self.notifier.extend_timeout(600)
        mode = self.config.defaults.mode
        if mode != "clip":
            model = getattr(self.config.ollama.models, mode)
            try:
                self.llm.preload(model)
                self.ollama_up = True
            except PromptdError as exc:
                self.ollama_up = False
                self.degraded_seen.set()  # the health loop watches for Ollama to come back
                self.ctx.composer.mark_down(exc.message)
                log.warning("ollama_unavailable", model=model, error=str(exc))
        analyzer = self.ctx.analyzer
        if isinstance(analyzer, ClipAnalyzer):
            try:
                analyzer.load()
            except PromptdError as exc:
                log.error("clip_unavailable", error=str(exc))

    def _restart_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        config = self.config
        self.watcher = Watcher(
            list(config.inbox),
            config.watch,
            is_candidate=lambda p: is_candidate(p, self.config),
            on_ready=self.enqueue,
            on_rule_change=lambda folder: self.request_scan(folder, redo_degraded=False),
            on_removed=self._on_removed,
            on_moved=self._on_moved,
            needs_rescan=lambda reason: self.request_scan(None, redo_degraded=False, reason=reason),
            ignore=config.images.ignore,
        )
        self.watcher.start()

    def _shutdown(self) -> int:
        self.notifier.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        self.queue.stop()
        self.worker.join(self.config.watch.stop_timeout_s)
        if self.worker.is_alive():
            log.warning("stop_timeout", seconds=self.config.watch.stop_timeout_s)
        self._write_state()
        log.info("stopped", **dict(self.tally.outcomes))
        return 0

    # --- main loop: signals, health pings, status ------------------------------------------

    def _main_loop(self) -> None:
        ping = watchdog_interval(self.environ)
        tick = min(ping, 1.0) if ping else 1.0
        while not self.stop_event.wait(tick):
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
            if ping and self.healthy():
                self.notifier.watchdog()
            self._write_state()
            self.notifier.status(self.tally.status_line(len(self.queue)))

    def healthy(self) -> bool:
        """The observer and the worker are alive (gates WATCHDOG=1)."""
        watcher_ok = self.watcher is not None and self.watcher.healthy()
        return watcher_ok and self.worker.is_alive() and self.scanner.is_alive()

    def _write_state(self) -> None:
        ollama: OllamaState = (
            "unknown" if self.ollama_up is None else ("up" if self.ollama_up else "down")
        )
        state = self.tally.snapshot(
            queue=len(self.queue),
            ollama=ollama,
            clip_device=str(getattr(self.ctx.analyzer, "device", "unknown")),
        )
        try:
            write_state(service_state_path(self.config), state)
        except PromptdError as exc:
            log.warning("state_write_failed", error=str(exc))

    # --- intake -----------------------------------------------------------------------------

    def enqueue(self, path: Path) -> None:
        """A settled file, or one a scan found: queue it (the queue drops duplicates)."""
        self.queue.put(path)

    def request_scan(self, folder: Path | None, *, redo_degraded: bool, reason: str = "") -> None:
        """Ask the scanner to look at a folder (None: every inbox)."""
        if reason:
            log.info("rescan_requested", reason=reason)
        self.scan_requests.put((folder, redo_degraded))

    def _scan_loop(self) -> None:
        interval = self.config.watch.rescan_interval_s
        next_full = time.monotonic() + interval
        while not self.stop_event.is_set():
            try:
                folder, redo = self.scan_requests.get(
                    timeout=max(0.0, next_full - time.monotonic())
                )
            except queue.Empty:
                folder, redo = None, self.ollama_up is True
                next_full = time.monotonic() + self.config.watch.rescan_interval_s
            try:
                self._scan(folder, redo)
            except Exception:  # the scanner must outlive a bad folder
                log.exception("scan_crashed", folder=str(folder))

    def _scan(self, folder: Path | None, redo_degraded: bool) -> None:
        started = time.perf_counter()
        roots = [folder] if folder is not None else list(self.config.inbox)
        found = 0
        for root in roots:
            for path in pending_images(root, self.ctx, redo_degraded=redo_degraded):
                if self.stop_event.is_set():
                    return
                if self.watcher is not None and self._maybe_still_written(path):
                    self.watcher.hint(path)  # released once it has settled
                else:
                    self.queue.put_wait(path, self.stop_event)
                found += 1
        if folder is not None:
            self.tally.release_held(folder)
        log.info(
            "scan_done",
            folders=[str(r) for r in roots],
            pending=found,
            ms=round((time.perf_counter() - started) * 1000),
        )

    def _maybe_still_written(self, path: Path) -> bool:
        """Modified less than `watch.settle_s` ago: a scan must not read it half-written."""
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False
        return age < self.config.watch.settle_s

    def _on_removed(self, path: Path) -> None:
        if is_candidate(path, self.config):
            follow.remove_for(path)

    def _on_moved(self, src: Path, dest: Path) -> None:
        if not is_candidate(src, self.config):
            return
        root = self.ctx.rules.root_of(dest)
        if root is None or not is_candidate(dest, self.config):
            follow.remove_for(src)
            return
        try:
            naming = self.ctx.rules.resolve(dest).settings.naming
        except ConfigError:
            return
        follow.move_for(src, dest, naming, self.config.images.extensions)
        self.enqueue(dest)

    # --- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        """Batches from the queue through the pipeline; the next batch is decoded meanwhile."""
        batch_size = self.config.clip.batch_size
        with ThreadPoolExecutor(1, thread_name_prefix="promptd-prefetch") as prefetch:
            ahead: Future[Prepared] | None = None
            while True:
                if ahead is None:
                    paths = self.queue.get_batch(batch_size, timeout=0.5)
                    if paths is None:
                        return
                    if not paths:
                        continue
                    ahead = prefetch.submit(self._prepare, paths)
                prepared = ahead.result()
                more = (
                    self.queue.get_batch(batch_size, timeout=0)
                    if not self.stop_event.is_set()
                    else None
                )
                ahead = prefetch.submit(self._prepare, more) if more else None
                try:
                    results = finish_batch(prepared, self.ctx)
                except Exception:  # keep serving; the paths stay pending on disk
                    log.exception("batch_crashed", paths=[str(p) for p in prepared.paths])
                    results = [Result(p, "failed", "internal error") for p in prepared.paths]
                for result in results:
                    self._record(result)
                if self.stop_event.is_set():
                    if ahead is not None:
                        for path in ahead.result().paths:
                            self.queue.done(path)
                    return

    def _prepare(self, paths: list[Path]) -> Prepared:
        return prepare_batch(paths, self.ctx, redo_degraded=self.ollama_up is not False)

    def _record(self, result: Result) -> None:
        path = result.path
        self.tally.record(result)
        if result.outcome == "degraded":
            self.degraded_seen.set()
        if result.outcome == "retry":
            attempt = self.attempts.get(path, 0) + 1
            self.attempts[path] = attempt
            if self.queue.retry(path, attempt):
                return
            log.warning("retries_exhausted", path=str(path), reason=result.reason)
        self.attempts.pop(path, None)
        self.queue.done(path)

    # --- health: bring degraded results back -----------------------------------------------------

    def _health_loop(self) -> None:
        first = delay = self.config.watch.recheck_s
        while not self.stop_event.is_set():
            if not self.degraded_seen.wait(1.0):
                continue
            try:
                self.llm.list_models()
            except PromptdError:
                self.ollama_up = False
                self.stop_event.wait(delay)
                delay = min(delay * 2, 300.0)
                continue
            self.ollama_up = True
            self.ctx.composer.reset()
            self.degraded_seen.clear()
            log.info("ollama_back", action="redoing degraded results")
            self.request_scan(None, redo_degraded=True)
            self.stop_event.wait(delay)
            delay = min(delay * 2, 300.0) if self.degraded_seen.is_set() else first


def run_service(config: Config, config_path: Path | None) -> int:
    """Entry point of `promptd run`."""
    return Service(config, config_path, dict(os.environ)).run()
