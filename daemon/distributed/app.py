"""The Celery app every promptd machine builds from the same `distributed:` settings.

The settings follow shared/reference/distributed-workers.md:

- at-least-once delivery: late acknowledgement, a message whose worker process died goes back
  to the queue (``task_reject_on_worker_lost``), and each worker process reserves only the
  image it works on (prefetch 1, concurrency 1: one process per GPU);
- Redis emulates acknowledgement: a message unacknowledged for ``visibility_timeout`` is handed
  out again, even while its first worker still runs. The timeout is set everywhere Celery reads
  it (the shortest value among apps sharing a broker wins, so every promptd machine uses the
  same config), and ``task_time_limit`` is kept below it; the per-image lock
  (``daemon.distributed.coord``) is what keeps a second worker off an image;
- a new worker process loads its models before it takes an image (``worker_proc_alive_timeout``
  raised from 4 s), and the hard time limit requeues the image like a crash;
- no result backend (the results are the sidecars), connection retries forever, a soft
  shutdown so a second SIGTERM still lets the image in hand finish;
- only promptd's own JSON serializer is accepted, and it refuses a body over 16 KB before
  parsing it (a message is untrusted input).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery
from kombu.serialization import register

from daemon.config.distributed import DistributedSettings
from daemon.distributed.keys import MAX_MESSAGE_BYTES

TASK_NAME = "promptd.image"
WARM_UP_TIMEOUT_S = 600.0
SERIALIZER = "promptd-json"
CONTENT_TYPE = "application/x-promptd-json"


def _encode(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def _decode(data: str | bytes) -> Any:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message body of {len(data)} bytes refused (at most {MAX_MESSAGE_BYTES})")
    return json.loads(data)


register(SERIALIZER, _encode, _decode, content_type=CONTENT_TYPE, content_encoding="utf-8")  # type: ignore[no-untyped-call]


def celery_settings(settings: DistributedSettings) -> dict[str, Any]:
    """Celery's configuration for ``settings`` (pure: the tests read it)."""
    visibility = settings.visibility_timeout_s
    transport = {
        "visibility_timeout": visibility,
        # kombu >= 5.7: sweep for overdue messages every interval (not every 10th one).
        "unacked_restore_interval": settings.restore_interval_s,
        "unacked_restore_throttle": 1,
        # A broker that vanishes without closing the socket must not hang a publish.
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
    }
    return {
        "broker_url": settings.broker,
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        "broker_transport_options": transport,
        "result_backend": None,
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "visibility_timeout": visibility,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure": True,  # an exception is a result (the pipeline records it)
        # A child killed by the hard time limit is a hang: requeue, as for a crash (the
        # crash count then quarantines an image that hangs every worker).
        "task_acks_on_timeout": False,
        "task_time_limit": settings.task_time_limit_s,
        "task_default_queue": settings.queue,
        "task_create_missing_queues": True,
        "task_serializer": SERIALIZER,
        "accept_content": [SERIALIZER],
        "event_serializer": "json",
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_max_tasks_per_child": None,  # never reload the models per image
        # A new child loads the models before it takes an image (worker_process_init), which
        # takes longer than Celery's 4 s default; the time limit then covers the image only.
        "worker_proc_alive_timeout": WARM_UP_TIMEOUT_S,
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout_s,
        # A lost connection does not cancel the image in hand: the lock guards its write.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,  # promptd's JSON logging stays in charge
        "worker_redirect_stdouts": False,
        "worker_send_task_events": False,  # Flower turns events on when it connects
    }


def make_app(settings: DistributedSettings) -> Celery:
    """A Celery app configured for ``settings`` (no tasks registered: see ``tasks``)."""
    app = Celery("promptd", set_as_current=False)
    app.conf.update(celery_settings(settings))
    return app


def masked_url(url: str | None) -> str:
    """The broker URL with its password replaced by ``***`` (for logs and status)."""
    if not url:
        return "none"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
