"""The in-process GPU lock: CLIP inference and Ollama requests take turns on a small card.

On a 4 GB GPU, CLIP's activations and an Ollama model's KV cache do not fit at once; one lock
held around every CLIP forward pass and every Ollama request that makes a model work keeps
them apart. With ``gpu.exclusive: false`` the lock is a no-op and the stages overlap.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType


class GpuLock:
    """A re-entrant lock that also counts how long holders waited for it (for `status`)."""

    def __init__(self, exclusive: bool = True) -> None:
        self.exclusive = exclusive
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self.acquisitions = 0
        self.waited_s = 0.0

    def __enter__(self) -> GpuLock:
        if self.exclusive:
            started = time.perf_counter()
            self._lock.acquire()
            with self._stats_lock:
                self.acquisitions += 1
                self.waited_s += time.perf_counter() - started
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.exclusive:
            self._lock.release()
