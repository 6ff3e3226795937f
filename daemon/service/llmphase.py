"""``ollama.parallel``: a batch's compose requests, up to N in flight at once.

For users who run Ollama with ``OLLAMA_NUM_PARALLEL`` ≥ N on a card with room for N full
contexts: the queue hands out a batch for one model, and N requests keep its slots busy.
With ``gpu.exclusive`` the GPU lock is taken once around the whole phase, the N requests
together (``GpuLock.covered`` lets the helper threads' requests pass), instead of around
each request: CLIP then waits for the phase, never sharing the GPU with it.

Each helper thread tells the ``Heartbeat`` which image it has in hand under its own slot
(``promptd-llm_0`` ...), so one request stuck past the limit is still noticed. The
quarantine's record keeps the whole batch in hand until the phase ends (several images are
in hand at once), so after a crash each of them is retried alone.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from daemon.pipeline import ComposeStep
from daemon.records import Composition, Result
from daemon.service.gpulock import GpuLock
from daemon.service.progress import Heartbeat


class LlmPhase:
    """Runs compose steps ``parallel`` at a time; the steps' outcomes come back in order."""

    def __init__(self, gpu: GpuLock, heartbeat: Heartbeat, parallel: int) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        self._gpu = gpu
        self._heartbeat = heartbeat
        self.parallel = parallel
        self.peak = 0  # most steps seen in flight at once (for tests and the log)
        self._running = 0
        self._count_lock = threading.Lock()

    def __call__(self, steps: Sequence[ComposeStep]) -> list[Composition | Result]:
        """Every step run, up to ``parallel`` at once, under one turn of the GPU lock."""
        workers = min(self.parallel, len(steps))
        if workers <= 1:
            return [step() for step in steps]
        with self._gpu, ThreadPoolExecutor(workers, thread_name_prefix="promptd-llm") as pool:
            futures = [pool.submit(self._covered, step) for step in steps]
            return [future.result() for future in futures]

    def on_image(self, path: Path) -> None:
        """A helper thread begins composing ``path`` (the heartbeat's per-thread slot)."""
        self._heartbeat.end("worker")  # the batch's CLIP is over: the slots take over
        self._heartbeat.begin(threading.current_thread().name, str(path))

    def _covered(self, step: ComposeStep) -> Composition | Result:
        with self._count_lock:
            self._running += 1
            self.peak = max(self.peak, self._running)
        try:
            with self._gpu.covered():
                return step()
        finally:
            with self._count_lock:
                self._running -= 1
            self._heartbeat.end(threading.current_thread().name)
