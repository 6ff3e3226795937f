"""`promptd run`: the Service starts the threads, handles signals and talks to systemd.

Threads: the watcher's (events -> settle -> queue) and the scanner (``intake``), one worker
(``worker``: batches through the pipeline, the next decoded ahead), one health poller
(``health``: degraded results redone once Ollama answers). The main thread handles signals
and reloads, pings the systemd watchdog while the others are healthy and the worker makes
progress (nothing in hand longer than ``progress.time_limit``), and keeps the status file
current. At start, images that were in hand during a crash are counted, and those in hand
during two in a row are quarantined (``quarantine``). The first SIGTERM stops intake and
lets the image in hand finish; a second exits at once (sidecar writes are atomic either way).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

import structlog

from daemon import __version__, sidecar
from daemon.config import Config, load_config
from daemon.dataset.keeper import ManifestKeeper
from daemon.errors import ConfigError, PromptdError
from daemon.pipeline.analyze.clip import ClipAnalyzer
from daemon.pipeline.order import model_for
from daemon.service.gpulock import GpuLock
from daemon.service.health import HealthWatch
from daemon.service.intake import Intake
from daemon.service.live import Live
from daemon.service.progress import Heartbeat, StuckWatch, time_limit
from daemon.service.quarantine import Quarantine, quarantine_crashed
from daemon.service.queue import JobQueue, RetrySchedule
from daemon.service.sdnotify import Notifier, watchdog_interval
from daemon.service.state import service_state_path, write_state
from daemon.service.tally import Tally
from daemon.service.worker import Worker

if TYPE_CHECKING:
    from daemon.distributed.producer import Producer

log = structlog.get_logger("promptd.service")


class Companion(Protocol):
    """Something that serves beside the folder (the HTTP API): started before READY, stopped
    first on the way out, within the time it is given."""

    name: str
    url: str

    def start(self) -> None: ...

    def stop(self, timeout_s: float) -> bool: ...


class Service:
    """One running daemon; ``run()`` blocks until it is told to stop."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        environ: dict[str, str],
        *,
        local_worker: bool = False,
    ) -> None:
        self.config_path = config_path
        self.environ = environ
        self.notifier = Notifier.from_environ(environ)
        self.live = Live(config, GpuLock(config.gpu.exclusive))
        self.reload_requested = False
        self.tally = Tally()
        self.queue = JobQueue(
            config.watch.queue_size,
            schedule=RetrySchedule.default(),
            on_overflow=lambda: self.intake.request_scan(
                None, redo_degraded=False, reason="queue full"
            ),
            classify=lambda path: model_for(path, self.live.ctx),
            switch_after_s=lambda: self.live.config.ollama.switch_after_s,
        )
        self.producer = self._producer(config, local_worker)
        sink = self.queue if self.producer is None else self.producer.sink
        self.manifests = ManifestKeeper(lambda: self.live.config, lambda: self.live.ctx.rules)
        self.intake = Intake(self.live, sink, self.tally, self.manifests.note)
        self.heartbeat = Heartbeat()
        self.quarantine = Quarantine(service_state_path(config).parent)
        self.worker = Worker(
            self.live,
            self.queue,
            self.tally,
            lambda r: self.manifests.note(r.path),
            heartbeat=self.heartbeat,
            quarantine=self.quarantine,
        )
        self.stuck = StuckWatch(self.heartbeat)
        self.health = HealthWatch(
            self.live, lambda: self.intake.request_scan(None, redo_degraded=True)
        )
        self.companions: list[Companion] = []

    # --- start and stop ------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, stop cleanly; returns the exit code."""
        self._install_signals()
        for companion in self.companions:  # a port in use fails the start, before any work
            companion.start()
        self._prepare_inboxes()
        if self.producer is None:
            quarantine_crashed(self.quarantine, self.live.ctx, self.tally.record)
            self.notifier.status("loading models")
            self.notifier.extend_timeout(600)
            self.live.warm_up()
        else:
            self.producer.start()  # the workers run the models
        self.intake.restart_watcher()
        for thread in self._threads():
            thread.start()
        self.intake.request_scan(None, redo_degraded=True)
        self.notifier.ready()
        inboxes = [str(p) for p in self.live.config.inbox]
        log.info("service_ready", inbox=inboxes, version=__version__)
        self.manifests.discover()  # folders that keep manifests: rebuilt by the first flush
        self._main_loop()
        return self._shutdown()

    def _producer(self, config: Config, local_worker: bool) -> Producer | None:
        """With ``distributed.broker`` this service is a producer: its images go to the broker
        and workers run them (Celery is imported only then)."""
        if config.distributed.broker is None:
            if local_worker:
                message = "--worker needs distributed.broker in config.yaml"
                raise ConfigError(message, config.source, (message,))
            return None
        from daemon.distributed.producer import Producer

        return Producer(
            config,
            self.live,
            lambda reason: self.intake.request_scan(None, redo_degraded=False, reason=reason),
            local_worker=local_worker,
            state_dir=service_state_path(config).parent,
        )

    def _threads(self) -> tuple[threading.Thread, ...]:
        """The threads this service runs: a producer runs no worker and no Ollama watch."""
        if self.producer is not None:
            return (self.intake.thread,)
        return (self.worker.thread, self.intake.thread, self.health.thread)

    def _install_signals(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            if self.live.stop.is_set():
                os._exit(1)  # second signal: leave now; sidecar writes are atomic
            log.info("stopping", signal=signal.Signals(signum).name)
            self.live.stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def _prepare_inboxes(self) -> None:
        for inbox in self.live.config.inbox:
            inbox.mkdir(parents=True, exist_ok=True)
            swept = sidecar.sweep_temp_files(inbox)
            if swept:
                log.info("temp_files_swept", inbox=str(inbox), count=len(swept))

    def _shutdown(self) -> int:
        self.notifier.stopping()
        self.intake.stop_watcher()
        timeout = self.live.config.watch.stop_timeout_s
        deadline = time.monotonic() + timeout
        for companion in self.companions:  # ends open streams and waiting uploads too
            companion.stop(max(0.0, deadline - time.monotonic()))
        self.queue.stop()
        if self.producer is not None:
            self.producer.stop()
        else:
            self.worker.thread.join(max(0.0, deadline - time.monotonic()))
            if self.worker.thread.is_alive():
                # Left listed in hand: an image that cannot finish in time is a crash suspect.
                log.warning("stop_timeout", seconds=timeout)
            else:
                self.quarantine.clear()
        self.manifests.flush_all()
        self._write_state()
        log.info("stopped", **dict(self.tally.outcomes))
        return 0

    # --- reload ---------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: load config.yaml again; an invalid file is rejected and the old one stays."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, self.environ)
        except ConfigError as exc:
            log.error("reload_rejected", file=str(exc.path), problems=list(exc.problems))
            self.notifier.ready()
            return
        live = self.live
        old = live.config
        same_clip = new.clip == old.clip and new.cache_dir == old.cache_dir
        analyzer = live.ctx.analyzer
        keep = analyzer if same_clip and isinstance(analyzer, ClipAnalyzer) else None
        live.apply(new, keep)
        if new.distributed != old.distributed:
            log.warning("reload_distributed_ignored", hint="restart to change distributed:")
        if (new.inbox, new.watch, new.images) != (old.inbox, old.watch, old.images):
            self.intake.restart_watcher()
        if new.api != old.api and self.companions:
            log.warning("api_settings_need_restart", detail="api.* changes apply at the next start")
        log.info("config_reloaded", file=str(self.config_path))
        self.intake.request_scan(None, redo_degraded=True)
        self.notifier.ready()

    # --- main loop: signals, health pings, status ------------------------------------------

    def _main_loop(self) -> None:
        ping = watchdog_interval(self.environ)
        tick = min(ping, 1.0) if ping else 1.0
        while not self.live.stop.wait(tick):
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            limit = time_limit(self.live.config)
            progressing = self.stuck.progressing(limit, watchdog=ping is not None)
            if ping and progressing and self.healthy():
                self.notifier.watchdog()
            self.manifests.flush_due()
            self._write_state()
            self.notifier.status(self.tally.status_line(len(self.queue)))

    def healthy(self) -> bool:
        """The observers and every thread are alive and nothing has been in hand too long
        (gates WATCHDOG=1)."""
        threads = [t for t in self._threads() if t is not self.health.thread]
        producing = self.producer is None or self.producer.healthy()
        stuck = self.heartbeat.stuck(time_limit(self.live.config))
        return (
            stuck is None
            and producing
            and self.intake.watcher_healthy()
            and all(t.is_alive() for t in threads)
        )

    def _write_state(self) -> None:
        state = self.tally.snapshot(
            queue=len(self.queue),
            ollama=self.live.ollama_state,
            clip_device=str(getattr(self.live.ctx.analyzer, "device", "unknown")),
            api_url=next((c.url for c in self.companions if c.name == "http api"), ""),
        )
        try:
            write_state(service_state_path(self.live.config), state)
        except PromptdError as exc:
            log.warning("state_write_failed", error=str(exc))


def run_service(
    config: Config,
    config_path: Path | None,
    companions_for: Callable[[Service], Sequence[Companion]] | None = None,
    *,
    local_worker: bool = False,
) -> int:
    """Entry point of `promptd run`; ``companions_for`` adds what serves beside it (the API),
    ``local_worker`` is `promptd run --worker`."""
    service = Service(config, config_path, dict(os.environ), local_worker=local_worker)
    if companions_for is not None:
        service.companions.extend(companions_for(service))
    return service.run()
