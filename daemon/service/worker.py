"""The worker thread: batches of paths from the queue through the pipeline.

While one batch is on the GPU (CLIP, then one Ollama call per image), the next batch is
admitted and decoded on a prefetch thread, so the models never wait for the disk; when CLIP
cannot take the GPU from the LLM (``gpu.exclusive`` off, or CLIP on the CPU) the prefetch
thread runs CLIP over it too, so the LLM's next request never waits for CLIP. With
``ollama.parallel`` N, a batch's compose requests run N at a time (``llmphase``). Every
result is counted; a transient failure goes back to the queue on its retry schedule.

Both threads tell the ``Heartbeat`` what they have in hand (the service withholds the
systemd watchdog ping when something stays in hand too long) and the ``Quarantine`` which
images they hold (so a crash can be pinned on them). An image that was in hand during the
last crash (a suspect) is processed alone, with nothing else in hand, so a second crash is
pinned on it and not on its batch-mates.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import structlog

from daemon.pipeline import ComposeAll, Prepared, analyze_prepared, finish_batch, prepare_batch
from daemon.pipeline.order import clip_may_run_ahead
from daemon.records import Result
from daemon.service.live import Live
from daemon.service.llmphase import LlmPhase
from daemon.service.progress import Heartbeat
from daemon.service.quarantine import Quarantine
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
        *,
        heartbeat: Heartbeat | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        self._live = live
        self._queue = queue
        self._tally = tally
        self._on_result = on_result  # e.g. the manifest keeper
        self._attempts: dict[Path, int] = {}
        self.heartbeat = heartbeat or Heartbeat()
        self._quarantine = quarantine
        self._alone: deque[Path] = deque()  # suspects, each to be processed on its own
        self.thread = threading.Thread(target=self._run, name="promptd-worker", daemon=True)

    def _run(self) -> None:
        """Batches from the queue through the pipeline; the next batch is decoded meanwhile."""
        stop = self._live.stop
        with ThreadPoolExecutor(1, thread_name_prefix="promptd-prefetch") as prefetch:
            ahead: Future[Prepared] | None = None
            while True:
                if ahead is None:
                    if self._alone:  # nothing else is in hand now
                        self._finish(self._prepare([self._alone.popleft()]))
                        if stop.is_set():
                            return
                        continue
                    paths = self._take(timeout=0.5)
                    if paths is None:
                        return
                    if not paths:
                        continue
                    ahead = prefetch.submit(self._prepare, paths)
                prepared = ahead.result()
                wanted = not stop.is_set() and not self._alone
                more = self._take(timeout=0) if wanted else None
                ahead = prefetch.submit(self._prepare, more) if more else None
                self._finish(prepared)
                if stop.is_set():
                    if ahead is not None:
                        for path in ahead.result().paths:
                            self._queue.done(path)
                    return

    def _take(self, timeout: float) -> list[Path] | None:
        """A batch from the queue (at least ``ollama.parallel`` images, to keep N requests in
        flight), suspects set aside to be processed alone."""
        config = self._live.config
        size = max(config.clip.batch_size, config.ollama.parallel)
        paths = self._queue.get_batch(size, timeout=timeout)
        if not paths or self._quarantine is None:
            return paths
        suspects = [path for path in paths if self._quarantine.is_suspect(path)]
        self._alone.extend(suspects)
        return [path for path in paths if path not in suspects]

    def _prepare(self, paths: list[Path]) -> Prepared:
        if self._quarantine is not None:
            self._quarantine.hold(paths)
        self.heartbeat.begin("prefetch", f"{paths[0]} (decoding {len(paths)} image(s))")
        ctx = self._live.ctx
        try:
            prepared = prepare_batch(paths, ctx, redo_degraded=self._live.ollama_up is not False)
            if prepared.work and clip_may_run_ahead(ctx):
                self.heartbeat.begin("prefetch", f"{paths[0]} (CLIP over {len(prepared.work)})")
                prepared = self._clip_ahead(prepared)
        finally:
            self.heartbeat.end("prefetch")
        if self._quarantine is not None:
            self._quarantine.release(prepared.results)  # finished already: skipped, errors
        return prepared

    def _clip_ahead(self, prepared: Prepared) -> Prepared:
        """CLIP over the batch now, ahead of the LLM; on a bug, left to ``finish_batch``."""
        try:
            return analyze_prepared(prepared, self._live.ctx)
        except Exception:
            log.exception("clip_ahead_crashed", paths=[str(p) for p in prepared.paths])
            return prepared

    def _finish(self, prepared: Prepared) -> None:
        """The GPU stages for one prepared batch, then every result recorded."""
        finished: list[Path] = []

        def on_image(path: Path) -> None:
            self.heartbeat.begin("worker", str(path))
            if finished and self._quarantine is not None:
                self._quarantine.release(finished)  # the ones before it are written
            finished[:] = [path]

        parallel = self._live.config.ollama.parallel
        phase = LlmPhase(self._live.gpu, self.heartbeat, parallel) if parallel > 1 else None
        compose_all: ComposeAll | None = phase
        if prepared.work:
            first = prepared.work[0][0].path
            self.heartbeat.begin("worker", f"{first} (CLIP over {len(prepared.work)} image(s))")
        try:
            results = finish_batch(
                prepared,
                self._live.ctx,
                on_image=on_image if phase is None else phase.on_image,
                compose_all=compose_all,
            )
        except Exception:  # keep serving; the paths stay pending on disk
            log.exception("batch_crashed", paths=[str(p) for p in prepared.paths])
            results = [Result(p, "failed", "internal error") for p in prepared.paths]
        finally:
            self.heartbeat.end("worker")
        if self._quarantine is not None:
            self._quarantine.release(prepared.paths)
        for result in results:
            self._record(result)

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
