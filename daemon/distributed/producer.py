"""What `promptd run` adds when a broker is configured: it becomes the producer.

The watcher and the scanner stay as they are; their images go to the ``BrokerSink``. One
monitor thread watches the broker once a second: it measures the queue, reads the workers'
heartbeats (so ``live.ollama_up`` follows what the workers see), writes the status file that
`promptd status` prints, and, when the broker comes back or restarted empty (a new Redis
run id), asks for a full rescan: the filesystem is the truth, so the scan sends every image
still pending. While the broker is away it is probed with backoff (1 s doubling to 30 s).

With ``--worker`` a local `promptd worker` runs as a child process (restarted with backoff if
it dies): Celery's worker wants its own main thread and signals, and a crash of its GPU work
must not take the watcher down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import structlog
from redis import Redis
from redis.exceptions import RedisError

from daemon.config import Config
from daemon.distributed.app import make_app, masked_url
from daemon.distributed.coord import Coordinator
from daemon.distributed.inboxes import inbox_map
from daemon.distributed.sink import BrokerSink
from daemon.distributed.status import BrokerStatus, status_path, write_status
from daemon.pipeline.admit import admit
from daemon.records import Result
from daemon.service.live import Live

log = structlog.get_logger("promptd.distributed")
_MAX_BACKOFF_S = 30.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Producer:
    """The sink, the broker monitor and the optional local worker of one `promptd run`."""

    def __init__(
        self,
        config: Config,
        live: Live,
        request_scan: Callable[[str], None],
        *,
        local_worker: bool = False,
        state_dir: Path,
    ) -> None:
        settings = config.distributed
        self._live, self._request_scan = live, request_scan
        self._settings = settings
        self._url = masked_url(settings.broker)
        self.app = make_app(settings)
        client = Redis.from_url(str(settings.broker), socket_timeout=10, socket_connect_timeout=5)
        self.coord = Coordinator(client, settings.queue, queued_ttl_s=settings.queued_ttl_s)
        self._folders = inbox_map(config)
        names = {folder: name for name, folder in self._folders.items()}
        self.sink = BrokerSink(
            self.app,
            self.coord,
            names,
            settings,
            on_overflow=lambda: request_scan("broker queue full"),
            on_down=self._went_down,
        )
        self._status_file = status_path(state_dir)
        self._status = BrokerStatus(url=self._url)
        self._run_id: str | None = None
        self._wake = threading.Event()
        self.thread = threading.Thread(target=self._monitor, name="promptd-broker", daemon=True)
        self._worker = LocalWorker(config) if local_worker else None

    def start(self) -> None:
        """Check the broker once (so the start-up scan knows), then watch it from a thread."""
        self._probe()
        self.thread.start()
        if self._worker is not None:
            self._worker.start()

    def stop(self) -> None:
        """Stop the local worker (it finishes its image); ``live.stop`` ends the monitor."""
        self._wake.set()
        if self._worker is not None:
            self._worker.stop(self._live.config.watch.stop_timeout_s)
        self.thread.join(5)

    def healthy(self) -> bool:
        """The monitor thread runs (a broker outage is reported, not unhealthy)."""
        return self.thread.is_alive()

    # --- the monitor ---------------------------------------------------------------------------

    def _went_down(self, error: str) -> None:
        if self._status.reachable is not False:
            log.warning("broker_unreachable", broker=self._url, error=error,
                        next="retrying with backoff; images are found again once it is back")  # fmt: skip
            self._status = _replace(self._status, reachable=False, since=_now(), error=error)
        self.sink.reachable = False
        self._wake.set()

    def _monitor(self) -> None:
        backoff = 1.0
        while not self._live.stop.is_set():
            up = self._probe()
            backoff = 1.0 if up else min(backoff * 2, _MAX_BACKOFF_S)
            self._wake.clear()
            self._live.stop.wait(1.0 if up else backoff)

    def _probe(self) -> bool:
        """One look at the broker: reachable? restarted? queue, workers; writes the status."""
        try:
            info = self.coord.client.info("server")
            queued = int(self.coord.client.llen(self._settings.queue))
            in_hand = int(self.coord.client.hlen("unacked"))
            workers = tuple(self.coord.workers())
        except (RedisError, OSError) as exc:
            self._went_down(f"{type(exc).__name__}: {exc}")
            self._write()
            return False
        run_id = str(info.get("run_id", ""))
        was = self._status.reachable
        if was is False:
            log.info("broker_reconnected", broker=self._url)
            self._request_scan("broker reconnected")
        elif self._run_id is not None and run_id != self._run_id:
            log.warning("broker_restarted", broker=self._url, hint="run Redis with appendonly yes")
            self._request_scan("broker restarted")
        self._run_id = run_id
        self.sink.reachable = True
        self.sink.measured(queued)
        status = self._status
        if was is not True:
            status = _replace(status, reachable=True, since=_now(), error="",
                              reconnects=status.reconnects + (was is False))  # fmt: skip
        self._status = _replace(status, queued=queued, in_hand=in_hand, workers=workers)
        self._follow_workers(workers)
        self._write()
        try:
            self._recheck()
        except (RedisError, OSError) as exc:
            self._went_down(f"{type(exc).__name__}: {exc}")
        return True

    def _recheck(self) -> None:
        """Images a worker turned away (lock held): once the holder should be done, send the
        image again if it is still pending and nobody holds it (the holder died)."""
        follow = self._settings.lock_timeout_s * 2
        for key in self.coord.due_rechecks():
            folder = self._folders.get(key.inbox)
            if folder is None:
                continue
            path = folder.joinpath(*key.path.split("/"))
            if isinstance(admit(path, self._live.ctx), Result):
                continue  # done meanwhile, gone, or not an image promptd handles
            left = self.coord.mark_left_s(key)
            if self.coord.in_hand(key) or 0 < left <= follow + 1:
                self.coord.recheck_later(key, max(left, self._settings.lock_timeout_s) + 1)
            elif left == -2:
                log.info("image_resent", image=key.name, reason="its holder stopped reporting")
                self.sink.put(path)

    def _follow_workers(self, workers: tuple[dict[str, str], ...]) -> None:
        """``live.ollama_up`` is what the workers see (the periodic rescan redoes degraded
        images only while some worker's Ollama is up)."""
        states = {w.get("ollama") for w in workers}
        self._live.ollama_up = True if "up" in states else (False if "down" in states else None)

    def _write(self) -> None:
        self._status = _replace(self._status, updated_at=_now())
        try:
            write_status(self._status_file, self._status)
        except OSError as exc:
            log.warning("state_write_failed", file=str(self._status_file), error=str(exc))


def _replace(status: BrokerStatus, **changes: object) -> BrokerStatus:
    return replace(status, **changes)  # type: ignore[arg-type]


class LocalWorker:
    """`promptd worker` as a child of `promptd run --worker`, restarted if it dies."""

    def __init__(self, config: Config) -> None:
        self._argv = [sys.executable, "-m", "daemon.cli", "worker"]
        if config.source is not None:
            self._argv += ["--config", str(config.source)]
        self._env = {k: v for k, v in os.environ.items()
                     if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._supervise, name="promptd-local-worker", daemon=True
        )

    def start(self) -> None:
        """Start the child and its supervisor thread."""
        self._thread.start()

    def _supervise(self) -> None:
        backoff = 5.0
        while not self._stop.is_set():
            self._proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, env=self._env)
            log.info("local_worker_started", pid=self._proc.pid)
            code = self._proc.wait()
            if self._stop.is_set():
                return
            log.error("local_worker_exited", code=code, restart_in_s=backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 120.0)

    def stop(self, timeout: float) -> None:
        """SIGTERM (warm shutdown: the image in hand finishes), SIGKILL after ``timeout``."""
        self._stop.set()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("local_worker_killed", pid=proc.pid, after_s=timeout)
            proc.kill()
            proc.wait(10)
