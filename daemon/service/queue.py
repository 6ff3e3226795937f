"""The work queue of `promptd run`: image paths, de-duplicated, bounded, with retries.

Only paths wait here, never image data, so memory does not grow with the backlog's images.
A path is in at most one of three places: *ready* (waiting for a worker), *in flight*
(a worker holds it) or *delayed* (a retry waiting for its time). Repeated events for it
(a NAS touching attributes, paperless#13511) are dropped, except that a path hinted again
while in flight is marked *dirty* and queued once more when the worker is done, so a file
rewritten during processing is not missed.

The watcher's thread must never block, so `put` drops the path when the queue is full and
sets `overflowed`: the filesystem is the truth, and the rescan the service runs after an
overflow finds the dropped paths again. Scans use `put_wait`, which waits for room instead.
One Condition guards everything; `clock` (for retry times and waits) is injectable for
tests, while `timeout`s are real seconds.

Ready paths wait in per-model lanes (``lanes``, named by ``classify`` outside the lock) and
go out model by model, bounded by ``switch_after_s()``; without ``classify``, or at 0 s, in
arrival order.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import ConfigError
from daemon.service.lanes import Key, Lanes, classify_safely

_MAX_DELAY_S = 86400.0
_MAX_RETRIES = 20


@dataclass(frozen=True)
class RetrySchedule:
    """Seconds to wait before each retry of a transient failure; finite, validated (rq's Retry)."""

    delays: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)

    def __post_init__(self) -> None:
        problems = [
            f"delays[{i}] = {d!r}: must be a number of seconds from 0 to {_MAX_DELAY_S:g}"
            for i, d in enumerate(self.delays)
            if not isinstance(d, (int, float)) or not math.isfinite(d) or not 0 <= d <= _MAX_DELAY_S
        ]
        if len(self.delays) > _MAX_RETRIES:
            problems.append(f"at most {_MAX_RETRIES} retries, got {len(self.delays)}")
        if problems:
            raise ConfigError(
                "invalid retry schedule: " + "; ".join(problems), None, tuple(problems)
            )

    @classmethod
    def default(cls) -> RetrySchedule:
        """5 s, 30 s, 2 min, 10 min: then the caller writes the final result."""
        return cls()

    def delay(self, attempt: int) -> float | None:
        """The wait before retry number `attempt` (1 = after the first failure); None when
        the schedule is used up."""
        if 1 <= attempt <= len(self.delays):
            return float(self.delays[attempt - 1])
        return None


class JobQueue:
    """A bounded, de-duplicated, thread-safe queue of image paths with delayed retries."""

    def __init__(
        self,
        maxsize: int,
        *,
        schedule: RetrySchedule | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_overflow: Callable[[], None] | None = None,
        classify: Callable[[Path], Key] | None = None,
        switch_after_s: Callable[[], float] = lambda: 0.0,
    ) -> None:
        if maxsize < 1:
            raise ConfigError(f"queue size must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self.schedule = schedule or RetrySchedule.default()
        self._clock = clock
        self._on_overflow = on_overflow
        self._cond = threading.Condition()
        self._classify = classify
        self._switch_after_s = switch_after_s
        self._ready = Lanes()
        self._keys: dict[Path, Key] = {}  # the lane of each path queued or in flight
        self._queued: set[Path] = set()  # ready or delayed
        self._in_flight: set[Path] = set()
        self._dirty: set[Path] = set()
        self._delayed: list[tuple[float, int, Path]] = []  # (due, seq, path)
        self._seq = itertools.count()
        self._overflowed = False
        self._stopped = False

    # --- producers -------------------------------------------------------------------------

    def _admit(self, path: Path) -> bool | None:
        """With the lock held: False if the path is known (dirty noted), None if new."""
        if self._stopped:
            return False
        if path in self._in_flight:
            self._dirty.add(path)
            return False
        if path in self._queued:
            return False
        return None

    def _append(self, path: Path, key: Key) -> None:
        self._keys[path] = key
        self._ready.append(path, key, self._clock())
        self._queued.add(path)
        self._cond.notify_all()

    def _known(self, path: Path) -> bool | None:
        with self._cond:
            return self._admit(path)

    def put(self, path: Path) -> bool:
        """Queue `path` without ever blocking; False when it is already queued, in flight
        (then it runs once more after `done`), the queue is stopped, or the queue is full
        (then the path is dropped and `overflowed` is set)."""
        first_overflow = False
        known = self._known(path)
        if known is not None:
            return known
        key = classify_safely(self._classify, path)
        with self._cond:
            known = self._admit(path)
            if known is not None:
                return known
            if len(self._ready) >= self.maxsize:
                first_overflow = not self._overflowed
                self._overflowed = True
            else:
                self._append(path, key)
                return True
        if first_overflow and self._on_overflow is not None:
            self._on_overflow()
        return False

    def put_wait(self, path: Path, stop: threading.Event, poll_s: float = 0.1) -> bool:
        """Like `put`, but wait for room when the queue is full (for scans, which may block);
        False if `stop` is set or the queue is stopped first."""
        known = self._known(path)
        if known is not None:
            return known
        key = classify_safely(self._classify, path)
        with self._cond:
            while True:
                known = self._admit(path)
                if known is not None:
                    return known
                if stop.is_set():
                    return False
                if len(self._ready) < self.maxsize:
                    self._append(path, key)
                    return True
                self._cond.wait(poll_s)

    @property
    def overflowed(self) -> bool:
        """Whether a path was dropped because the queue was full (since `take_overflow`)."""
        with self._cond:
            return self._overflowed

    def take_overflow(self) -> bool:
        """Read and clear `overflowed`; True means: schedule a rescan."""
        with self._cond:
            was, self._overflowed = self._overflowed, False
            return was

    # --- consumers -------------------------------------------------------------------------

    def _promote(self) -> None:
        """Move retries whose time has come to the ready queue (they may exceed maxsize)."""
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, path = heapq.heappop(self._delayed)
            self._ready.append(path, self._keys.get(path), now)

    def _wait_ready(self, timeout: float | None) -> bool:
        """With the lock held: wait until a path is ready (True), or timeout or stop (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._stopped:
                return False
            self._promote()
            if self._ready:
                return True
            wait = None if end is None else end - time.monotonic()
            if wait is not None and wait <= 0:
                return False
            if self._delayed:
                due_in = max(self._delayed[0][0] - self._clock(), 0.001)
                wait = due_in if wait is None else min(wait, due_in)
            self._cond.wait(wait)

    def _take(self, max_n: int) -> list[Path]:
        batch = self._ready.take(max_n, self._clock(), self._switch_after_s())
        for path in batch:
            self._queued.discard(path)
            self._in_flight.add(path)
        return batch

    def get(self, timeout: float | None = None) -> Path | None:
        """The next path, now in flight; None on timeout or once the queue is stopped."""
        with self._cond:
            if not self._wait_ready(timeout):
                return None
            (path,) = self._take(1)
            self._cond.notify_all()
            return path

    def get_batch(self, max_n: int, timeout: float | None = None) -> list[Path] | None:
        """Up to `max_n` ready paths at once (so CLIP can batch them), waiting `timeout` for
        the first; [] on timeout, None once the queue is stopped."""
        with self._cond:
            if not self._wait_ready(timeout):
                return None if self._stopped else []
            batch = self._take(max_n)
            self._cond.notify_all()
            return batch

    def done(self, path: Path) -> None:
        """The worker finished `path`; if it was hinted meanwhile, it is queued once more."""
        with self._cond:
            self._in_flight.discard(path)
            key = self._keys.pop(path, None)
            if path in self._dirty:
                self._dirty.discard(path)
                if not self._stopped and path not in self._queued:
                    self._append(path, key)
            self._cond.notify_all()

    def retry(self, path: Path, attempt: int) -> bool:
        """Instead of `done`: run `path` again after the schedule's delay for `attempt`
        (1 = first failure). False when the schedule is used up: the path stays in flight,
        and the caller writes the final result and calls `done`."""
        delay = self.schedule.delay(attempt)
        if delay is None:
            return False
        with self._cond:
            self._in_flight.discard(path)
            self._dirty.discard(path)
            if path not in self._queued:
                heapq.heappush(self._delayed, (self._clock() + delay, next(self._seq), path))
                self._queued.add(path)
            self._cond.notify_all()
        return True

    def stop(self) -> None:
        """Stop: blocked and later getters return None at once, puts are refused."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    @property
    def stopped(self) -> bool:
        """Whether `stop` was called."""
        return self._stopped

    # --- counts ----------------------------------------------------------------------------

    @property
    def model_switches(self) -> int:
        """How often the model of the paths handed out changed."""
        with self._cond:
            return self._ready.switches

    def __len__(self) -> int:
        """Paths ready for a worker."""
        with self._cond:
            return len(self._ready)

    def in_flight(self) -> int:
        """Paths a worker holds."""
        with self._cond:
            return len(self._in_flight)

    def delayed(self) -> int:
        """Paths waiting for a retry."""
        with self._cond:
            return len(self._delayed)
