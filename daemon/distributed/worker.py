"""`promptd worker`: a Celery worker that takes images from the broker, one GPU per process.

Pool: prefork with one child (``-P prefork -c 1``), chosen over ``solo`` for three facts from
the reference: the hard ``task_time_limit`` is enforced only by prefork (a wedged CUDA call or
decoder gets the child killed and replaced, never the worker); a child that dies is noticed at
once and its message requeued (``WorkerLostError`` with reject-on-lost), where with ``solo``
a dead worker's image waits for the visibility timeout; and the parent keeps talking to the
broker (heartbeats, remote control, Flower) while the child works. The price: CUDA must not be
touched before the fork, so the parent never imports torch; each child loads the models in
``worker_process_init`` before it takes an image (Celery's 4 s budget for that hook is raised
to ``WARM_UP_TIMEOUT_S``).

systemd: READY=1 once the worker consumes from the broker, STOPPING=1 on shutdown. The
first SIGTERM stops taking images and lets the one in hand finish (Celery's warm shutdown).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timezone
from typing import Any

import structlog
from celery.signals import worker_process_init, worker_ready, worker_shutting_down
from redis import Redis
from redis.exceptions import RedisError

from daemon import __version__
from daemon.config import Config
from daemon.distributed.app import make_app, masked_url
from daemon.distributed.coord import Coordinator
from daemon.distributed.inboxes import inbox_map
from daemon.distributed.tasks import RunnerHolder, register
from daemon.service.sdnotify import Notifier

log = structlog.get_logger("promptd.distributed")


def default_name() -> str:
    """A node name unique per process: ``promptd-PID@HOST``."""
    return f"promptd-{os.getpid()}@{socket.gethostname()}"


class WorkerBeat:
    """The parent's heartbeat: this worker's hash in Redis, renewed every ``heartbeat_s``."""

    def __init__(self, config: Config, name: str) -> None:
        settings = config.distributed
        self.name, self.every = name, settings.heartbeat_s
        client = Redis.from_url(str(settings.broker), socket_timeout=10, socket_connect_timeout=5)
        self.coord = Coordinator(client, settings.queue, queued_ttl_s=settings.queued_ttl_s)
        self.fields = {
            "name": name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "clip_device": config.clip.device,
            "version": __version__,
        }
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="promptd-beat", daemon=True)
        self._reachable: bool | None = None

    def _run(self) -> None:
        while True:
            try:
                now = datetime.now(timezone.utc).isoformat(timespec="seconds")
                self.coord.beat(self.name, {**self.fields, "seen_at": now}, self.every * 3)
                self._report(True, "")
            except RedisError as exc:
                self._report(False, str(exc))
            if self.stop.wait(self.every):
                return

    def _report(self, reachable: bool, error: str) -> None:
        if reachable == self._reachable:
            return
        if reachable:
            log.info("broker_reachable", worker=self.name)
        else:
            log.warning("broker_unreachable", worker=self.name, error=error,
                        next="Celery reconnects with backoff")  # fmt: skip
        self._reachable = reachable


def run_worker(config: Config, name: str | None = None) -> int:
    """Run one Celery worker process until it is stopped; returns its exit code."""
    settings = config.distributed
    name = name or default_name()
    folders = inbox_map(config, watched=False)
    for inbox, folder in folders.items():
        if not folder.is_dir():
            log.warning("inbox_missing", inbox=inbox, folder=str(folder),
                        hint="mount the share there, or map the name in distributed.inboxes")  # fmt: skip
    app = make_app(settings)
    holder = RunnerHolder(config, name)
    register(app, config, name, holder)
    notifier = Notifier.from_environ(os.environ)
    beat = WorkerBeat(config, name)

    def on_ready(**_: Any) -> None:
        beat.thread.start()
        notifier.ready()
        log.info("worker_ready", worker=name, broker=masked_url(settings.broker),
                 queue=settings.queue, inboxes={k: str(v) for k, v in folders.items()},
                 pid=os.getpid(), version=__version__)  # fmt: skip

    def on_stopping(**_: Any) -> None:
        notifier.stopping()
        beat.stop.set()
        log.info("worker_stopping", worker=name)

    def on_child(**_: Any) -> None:
        holder.warm_up()

    for noisy in ("celery.worker.strategy", "celery.app.trace"):  # two lines per image
        logging.getLogger(noisy).setLevel(logging.WARNING)
    worker_ready.connect(on_ready, weak=False)
    worker_shutting_down.connect(on_stopping, weak=False)
    worker_process_init.connect(on_child, weak=False)
    worker = app.Worker(
        hostname=name,
        pool_cls="prefork",
        concurrency=1,
        queues=[settings.queue],
        without_mingle=True,
        without_gossip=True,
        quiet=True,
        loglevel=config.log.level.upper(),
    )
    worker.start()
    return int(worker.exitcode or 0)
