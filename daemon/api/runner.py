"""Uploads run on a small pool of their own threads, ahead of the folder on the GPU lock.

``admit()`` hands out a ``Ticket`` while fewer than ``api.max_pending`` uploads wait or run,
else raises 429 with a ``Retry-After`` estimated from recent uploads. Each piece of work a
ticket runs goes through the pool inside ``GpuLock.priority()``, so its CLIP and Ollama turns
come before the folder backlog's. A ticket's deadline (``api.timeout_s``, from admission)
gives 504; stopping the service gives 503. Neither can interrupt a model call already on its
way: that thread finishes, its result is dropped, and only then is its slot given back, so the
number of threads and of waiting uploads stays bounded however clients behave.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import TypeVar

from daemon.api.problems import ApiError, from_pipeline

T = TypeVar("T")
POLL_S = 0.25  # how often a waiting request looks at the stop flag
MAX_THREADS = 2  # one decodes while another is on the GPU; more would only hold more pixels


class UploadRunner:
    """The bounded pool, its pending count and the recent durations behind ``Retry-After``."""

    def __init__(
        self,
        *,
        max_pending: int,
        timeout_s: float,
        priority: Callable[[], AbstractContextManager[object]],
        closing: threading.Event,
    ) -> None:
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self._priority = priority
        self._closing = closing
        self.threads = min(MAX_THREADS, max_pending)
        self._pool = ThreadPoolExecutor(self.threads, "promptd-api")
        self._lock = threading.Lock()
        self._pending = 0
        self._mean_s = 1.0
        self.served = 0

    @property
    def pending(self) -> int:
        """Uploads admitted and not yet finished (their threads included)."""
        with self._lock:
            return self._pending

    def admit(self) -> Ticket:
        """A ticket for one upload; ApiError 429 (with Retry-After) when the queue is full."""
        if self._closing.is_set():
            raise ApiError(503, "promptd is stopping", kind="stopping")
        with self._lock:
            if self._pending >= self.max_pending:
                wait = math.ceil(self._mean_s * self._pending / self.threads)
                raise ApiError(
                    429,
                    f"{self._pending} uploads are waiting (api.max_pending); try again shortly",
                    headers={"Retry-After": str(max(1, min(wait, 600)))},
                )
            self._pending += 1
        return Ticket(self)

    def _finished(self, seconds: float) -> None:
        with self._lock:
            self._pending -= 1
            self.served += 1
            self._mean_s = 0.8 * self._mean_s + 0.2 * seconds

    def shutdown(self) -> None:
        """Refuse new work; threads already running finish on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class Ticket:
    """One admitted upload: runs its steps on the pool until ``close()`` gives the slot back."""

    def __init__(self, runner: UploadRunner) -> None:
        self._runner = runner
        self._started = time.monotonic()
        self.deadline = self._started + runner.timeout_s
        self._last: Future[object] | None = None
        self._closed = False

    async def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the pool with GPU priority; 504 past the deadline, 503 on stop."""
        runner = self._runner

        def prioritised() -> T:
            with runner._priority():
                return work()

        try:
            future = runner._pool.submit(prioritised)
        except RuntimeError as exc:  # the pool was shut down: the service is stopping
            raise ApiError(503, "promptd is stopping", kind="stopping") from exc
        self._last = future  # type: ignore[assignment]
        waiting = asyncio.wrap_future(future)
        while True:
            left = self.deadline - time.monotonic()
            done, _ = await asyncio.wait({waiting}, timeout=max(0.0, min(POLL_S, left)))
            if done and waiting.cancelled():  # the pool was shut down under it
                raise ApiError(503, "promptd is stopping", kind="stopping")
            if done:
                try:
                    return waiting.result()
                except ApiError:
                    raise
                except Exception as exc:  # the pipeline's refusal, as an HTTP answer
                    raise from_pipeline(exc) from exc
            if runner._closing.is_set():
                raise ApiError(
                    503, "promptd is stopping; the upload was not finished", kind="stopping"
                )
            if left <= 0:
                raise ApiError(
                    504,
                    f"no answer within api.timeout_s ({runner.timeout_s:g} s); the model may be "
                    "slow or busy with a long queue",
                )

    def close(self) -> None:
        """Give the slot back once the last step's thread is done (now, or when it finishes)."""
        if self._closed:
            return
        self._closed = True
        last, runner, started = self._last, self._runner, self._started
        if last is None or last.done():
            runner._finished(time.monotonic() - started)
        else:
            last.add_done_callback(lambda _f: runner._finished(time.monotonic() - started))
