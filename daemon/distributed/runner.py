"""One image on a worker: the same pipeline as one machine, plus the guarantees of many.

``Runner.handle`` takes a task's payload and, in order: checks the key (untrusted), finds the
file on this machine's mount, takes the image's lock (held: another worker has it; leave it),
waits briefly for the file to become visible, quarantines an image two workers died on, and
runs ``process_batch`` on it, writing only while the lock is still ours. Every path out of
here ends with one log line; nothing is raised for a bad or missing image.

Built lazily in the Celery worker's child process on its first task: the models (CLIP on this
machine's ``clip.device``, Ollama at its ``ollama.host``) load there, after the fork.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from redis import Redis
from redis.exceptions import LockError, RedisError

from daemon.config import Config
from daemon.distributed.coord import Coordinator, Heartbeat
from daemon.distributed.inboxes import absence_reason, inbox_map, local_path, wait_visible
from daemon.distributed.keys import BadKey, ImageKey, key_from_message
from daemon.pipeline import process_batch
from daemon.pipeline.write import write_quarantined
from daemon.records import Result
from daemon.service.gpulock import GpuLock
from daemon.service.live import Live
from daemon.service.queue import RetrySchedule

log = structlog.get_logger("promptd.distributed")
QUARANTINE_AFTER = 2  # worker processes that died with the image in hand


def lock_token(hostname: str, pid: int, task_id: str) -> str:
    """The lock's owner token: the worker's parent process can rebuild it if its child dies."""
    return f"{hostname}|{pid}|{task_id}"


@dataclass(frozen=True)
class Outcome:
    """What the task does after the image: retry after ``retry_in`` s, send it again, or end."""

    result: Result | None = None
    retry_in: float | None = None
    resend: ImageKey | None = None


class Runner:
    """The worker process's pipeline context, Redis keys and this machine's inbox folders."""

    def __init__(self, config: Config, worker_name: str) -> None:
        self.folders = inbox_map(config, watched=False)
        self.config = config.model_copy(update={"inbox": tuple(self.folders.values())})
        self.settings = self.config.distributed
        self.live = Live(self.config, GpuLock(self.config.gpu.exclusive))
        self.worker_name = worker_name
        self.schedule = RetrySchedule.default()
        client = Redis.from_url(
            str(self.settings.broker), socket_timeout=30, socket_connect_timeout=10
        )
        self.coord = Coordinator(
            client, self.settings.queue, queued_ttl_s=self.settings.queued_ttl_s
        )

    def warm_up(self) -> None:
        """Load the Ollama model first, then CLIP (``Live.warm_up``); a failure here only
        means the first image tries again."""
        live = self.live
        live.warm_up(skip_while_down=False)
        analyzer = live.ctx.analyzer
        log.info("worker_warm", worker=self.worker_name, ollama=live.ollama_state,
                 clip_device=str(getattr(analyzer, "device", "none")))  # fmt: skip

    def handle(self, payload: Any, *, task_id: str, attempt: int, redelivered: bool) -> Outcome:
        """Process one task's image; see the module docstring for the order of the checks."""
        try:
            key = key_from_message(payload)
        except BadKey as exc:
            log.warning("task_refused", task=task_id, reason=exc.message)
            return Outcome()
        path, why = local_path(key, self.folders)
        if path is None:
            log.warning("task_refused", task=task_id, image=key.name, reason=why)
            return Outcome()
        lock = self.coord.lock(key, self.settings.lock_timeout_s)
        token = lock_token(socket.gethostname(), os.getpid(), task_id)
        if not lock.acquire(blocking=False, token=token):
            later = self.settings.lock_timeout_s * 2
            self.coord.recheck_later(key, later)
            log.info("image_locked", image=key.name, redelivered=redelivered,
                     reason="another worker holds it; leaving it to that worker",
                     recheck_in_s=later)  # fmt: skip
            return Outcome()
        self._current(key.name)
        try:
            with Heartbeat(self.coord, key, lock, self.settings.lock_timeout_s) as beat:
                outcome = self._locked(key, path, beat, attempt)
        finally:
            self._current("")
            try:
                lock.release()
            except LockError:
                log.warning("lock_already_lost", image=key.name)
        return outcome

    def _locked(self, key: ImageKey, path: Path, beat: Heartbeat, attempt: int) -> Outcome:
        self.coord.follow_holder(key, self.settings.lock_timeout_s * 2)
        st = wait_visible(path, key, self.settings.file_wait_s)
        if st is None:
            reason = absence_reason(path, self.folders.get(key.inbox))
            log.warning("image_not_visible", image=key.name, path=str(path), reason=reason,
                        waited_s=self.settings.file_wait_s, next="the producer's next scan sends it again")  # fmt: skip
            self.coord.finish(key)
            return Outcome()
        crashes = self.coord.crashes(key)
        ctx = self.live.ctx
        if crashes >= QUARANTINE_AFTER:
            result = write_quarantined(
                path, ctx, f"{crashes} worker processes died while processing this image"
            )
            log.error("image_quarantined", image=key.name, path=str(path), crashes=crashes)
            self.coord.ended(key)
            return self._end(key, result)
        self.coord.started(key)
        try:
            (result,) = process_batch(
                [path],
                ctx,
                redo_degraded=self.live.ollama_up is not False,
                should_write=lambda _: beat.owned(),
            )
        finally:
            self.coord.ended(key)
        self._note_ollama(result)
        if result.outcome == "retry":
            delay = self.schedule.delay(attempt + 1)
            if delay is not None:
                self._count("retry")
                self.coord.finish(key, keep_queued=True)
                return Outcome(result, retry_in=delay)
            log.warning("retries_exhausted", image=key.name, reason=result.reason)
        return self._end(key, result)

    def _end(self, key: ImageKey, result: Result) -> Outcome:
        self._count(result.outcome)
        resend = self.coord.finish(key)
        return Outcome(result, resend=key if resend else None)

    def _note_ollama(self, result: Result) -> None:
        if result.outcome == "ok" and result.mode not in (None, "clip"):
            self.live.ollama_up = True
        elif result.outcome == "degraded" and "Ollama" in (result.reason or ""):
            self.live.ollama_up = False

    def _count(self, outcome: str) -> None:
        try:
            self.coord.count(self.worker_name, outcome)
            self.coord.client.hset(
                self.coord.worker_key(self.worker_name), "ollama", self.live.ollama_state
            )
        except RedisError as exc:
            log.warning("worker_count_failed", error=str(exc))

    def _current(self, name: str) -> None:
        with contextlib.suppress(RedisError):
            self.coord.client.hset(
                self.coord.worker_key(self.worker_name),
                mapping={"current": name, "child_pid": str(os.getpid())},
            )
