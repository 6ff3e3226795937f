"""The producer's sink: the Intake puts pending images here, and they go to the broker.

The same two calls as the in-process ``JobQueue``: ``put`` (the watcher's thread: never
blocks long, drops the image when the broker is full or away) and ``put_wait`` (scans: wait
for room). An image already queued or in hand is not sent again (its Redis mark); one that
changed while in hand is marked to be sent once more when its worker is done. Whatever is
dropped here is found again by a scan: after an overflow, and after the broker comes back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog
from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from daemon.config.distributed import DistributedSettings
from daemon.distributed.app import SERIALIZER, TASK_NAME
from daemon.distributed.coord import Coordinator
from daemon.distributed.inboxes import key_for

log = structlog.get_logger("promptd.distributed")
BROKER_ERRORS = (OperationalError, RedisError, OSError)
_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}


class BrokerSink:
    """Sends image keys to the broker's queue; knows whether the broker is reachable."""

    def __init__(
        self,
        app: Celery,
        coord: Coordinator,
        names: Mapping[Path, str],
        settings: DistributedSettings,
        *,
        on_overflow: Callable[[], None],
        on_down: Callable[[str], None],
    ) -> None:
        self._app, self._coord, self._names = app, coord, dict(names)
        self._settings = settings
        self._on_overflow, self._on_down = on_overflow, on_down
        self._lock = threading.Lock()
        self.queued = 0  # the broker's queue length, as last measured (plus what we sent since)
        self.reachable = True
        self.sent = 0
        self._overflowed = False

    def measured(self, queued: int) -> None:
        """The monitor measured the queue; a scan waiting for room may go on."""
        with self._lock:
            self.queued = queued
            if queued < self._settings.max_queued:
                self._overflowed = False

    def put(self, path: Path) -> bool:
        """Send ``path`` unless it is queued already, the broker is full or away (dropped)."""
        if not self.reachable:
            return False
        if self.queued >= self._settings.max_queued:
            with self._lock:
                first, self._overflowed = not self._overflowed, True
            if first:
                self._on_overflow()
            return False
        return self._send(path)

    def put_wait(self, path: Path, stop: threading.Event, poll_s: float = 0.5) -> bool:
        """Like ``put``, but wait while the broker holds ``max_queued`` images already."""
        while self.queued >= self._settings.max_queued and self.reachable:
            if stop.wait(poll_s):
                return False
        return self.reachable and not stop.is_set() and self._send(path)

    def _send(self, path: Path) -> bool:
        try:
            st = path.stat(follow_symlinks=False)
        except OSError:
            return False  # gone already: nothing to do
        key = key_for(path, st, self._names)
        if key is None:
            log.warning("image_outside_inboxes", path=str(path))
            return False
        try:
            if not self._coord.mark_queued(key):
                self._coord.note_changed(key)
                return False
            try:
                self._app.send_task(
                    TASK_NAME,
                    kwargs={"image": key.to_message()},
                    queue=self._settings.queue,
                    serializer=SERIALIZER,
                    retry=True,
                    retry_policy=_RETRY_POLICY,
                )
            except BROKER_ERRORS:
                self._coord.unmark(key)
                raise
        except BROKER_ERRORS as exc:
            self.reachable = False
            self._on_down(f"{type(exc).__name__}: {exc}")
            return False
        with self._lock:
            self.queued += 1
            self.sent += 1
        return True
