"""The Celery task `promptd.image` and its request class.

The task body runs in the prefork child: it builds the ``Runner`` (and so the models) on its
first image, then hands each payload to it. ``ImageRequest`` runs in the worker's parent
process: when the child dies with an image in hand (a segfault, the OOM killer, the hard time
limit), Celery requeues the message at once (``task_reject_on_worker_lost``,
``task_acks_on_timeout`` off); the parent then
releases the dead child's lock, which it can name (host, child pid, task id), so the requeued
task is not turned away by a lock nobody will ever release.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import structlog
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery, Task
from celery.worker.request import Request
from redis import Redis
from redis.exceptions import RedisError

from daemon.config import Config
from daemon.distributed.app import SERIALIZER, TASK_NAME
from daemon.distributed.coord import Coordinator
from daemon.distributed.keys import BadKey, key_from_message
from daemon.distributed.runner import lock_token

log = structlog.get_logger("promptd.distributed")


class RunnerHolder:
    """Builds the ``Runner`` once per process, on first use (after the fork)."""

    def __init__(self, config: Config, worker_name: str) -> None:
        self.config = config
        self.worker_name = worker_name
        self._runner: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The runner of this process (a forked child never reuses its parent's)."""
        with self._lock:
            if self._runner is None or self._pid != os.getpid():
                from daemon.distributed.runner import Runner  # the pipeline, torch: in the child

                self._runner, self._pid = Runner(self.config, self.worker_name), os.getpid()
            return self._runner

    def warm_up(self) -> None:
        """In a new child, before it takes an image: build the runner, load the models."""
        self.get().warm_up()


class ImageRequest(Request):  # type: ignore[misc]
    """Frees the lock of a worker child that died with the image in hand."""

    coord: Coordinator | None = None  # set by ``register`` (one app per worker process)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)
        if isinstance(exc, (WorkerLostError, TimeLimitExceeded, SystemExit)) and self.coord:
            self._release_dead_childs_lock()
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )

    def _release_dead_childs_lock(self) -> None:
        try:
            key = key_from_message((self.kwargs or {}).get("image"))
        except BadKey:
            return
        token = lock_token(socket.gethostname(), int(self.worker_pid or 0), str(self.id))
        assert self.coord is not None
        released = self.coord.release_for(key, token)
        log.error("worker_process_died", image=key.name, child_pid=self.worker_pid,
                  lock_released=released, next="requeued for the next worker")  # fmt: skip


def register(app: Celery, config: Config, worker_name: str, holder: RunnerHolder) -> Task:
    """Register `promptd.image` on ``app``: the worker's side of every image."""
    settings = config.distributed
    client = Redis.from_url(str(settings.broker), socket_timeout=30, socket_connect_timeout=10)
    ImageRequest.coord = Coordinator(client, settings.queue, queued_ttl_s=settings.queued_ttl_s)

    @app.task(name=TASK_NAME, bind=True, Request=ImageRequest, max_retries=None)  # type: ignore[untyped-decorator]
    def process_image(self: Task, image: Any = None) -> None:
        runner = holder.get()
        delivery = self.request.delivery_info or {}
        try:
            outcome = runner.handle(
                image,
                task_id=str(self.request.id),
                attempt=int(self.request.retries or 0),
                redelivered=bool(delivery.get("redelivered")),
            )
        except RedisError as exc:  # the broker went away mid-task; the producer resends
            log.warning("broker_error", error=str(exc), next="the producer's scan sends it again")
            return
        if outcome.retry_in is not None:
            raise self.retry(countdown=outcome.retry_in, kwargs={"image": image})
        if outcome.resend is not None:
            app.send_task(TASK_NAME, kwargs={"image": outcome.resend.to_message()},
                          queue=settings.queue, serializer=SERIALIZER)  # fmt: skip

    return process_image
