"""The worker thread: batches of paths from the queue through the pipeline.

While one batch is on the GPU (CLIP, then one Ollama call per image), the next batch is
admitted and decoded on a prefetch thread, so the models never wait for the disk. Every
result is counted; a transient failure goes back to the queue on its retry schedule.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import structlog

from daemon.pipeline import Prepared, finish_batch, prepare_batch
from daemon.records import Result
from daemon.service.live import Live
from daemon.service.queue import JobQueue
from daemon.service.tally import Tally

log = structlog.get_logger("promptd.service")


class Worker:
    """Runs the pipeline over what the queue hands out until the queue stops."""

    def __init__(
        self,
        live: Live,
        queue: JobQueue,
        tally: Tally,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        self._live = live
        self._queue = queue
        self._tally = tally
        self._on_result = on_result  # e.g. the manifest keeper
        self._attempts: dict[Path, int] = {}
        self.thread = threading.Thread(target=self._run, name="promptd-worker", daemon=True)

    def _run(self) -> None:
        """Batches from the queue through the pipeline; the next batch is decoded meanwhile."""
        batch_size = self._live.config.clip.batch_size
        stop = self._live.stop
        with ThreadPoolExecutor(1, thread_name_prefix="promptd-prefetch") as prefetch:
            ahead: Future[Prepared] | None = None
            while True:
                if ahead is None:
                    paths = self._queue.get_batch(batch_size, timeout=0.5)
                    if paths is None:
                        return
                    if not paths:
                        continue
                    ahead = prefetch.submit(self._prepare, paths)
                prepared = ahead.result()
                more = self._queue.get_batch(batch_size, timeout=0) if not stop.is_set() else None
                ahead = prefetch.submit(self._prepare, more) if more else None
                try:
                    results = finish_batch(prepared, self._live.ctx)
                except Exception:  # keep serving; the paths stay pending on disk
                    log.exception("batch_crashed", paths=[str(p) for p in prepared.paths])
                    results = [Result(p, "failed", "internal error") for p in prepared.paths]
                for result in results:
                    self._record(result)
                if stop.is_set():
                    if ahead is not None:
                        for path in ahead.result().paths:
                            self._queue.done(path)
                    return

    def _prepare(self, paths: list[Path]) -> Prepared:
        return prepare_batch(paths, self._live.ctx, redo_degraded=self._live.ollama_up is not False)

    def _record(self, result: Result) -> None:
        path = result.path
        self._tally.record(result)
        if self._on_result is not None:
            self._on_result(result)
        if result.outcome == "degraded":
            self._live.degraded_seen.set()
        if result.outcome == "retry":
            attempt = self._attempts.get(path, 0) + 1
            self._attempts[path] = attempt
            if self._queue.retry(path, attempt):
                return
            log.warning("retries_exhausted", path=str(path), reason=result.reason)
        self._attempts.pop(path, None)
        self._queue.done(path)
