"""The JobQueue: de-duplicated, bounded, never blocking the watcher, with delayed retries."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.service.queue import JobQueue, RetrySchedule


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def paths(*names: str) -> list[Path]:
    return [Path("/inbox") / name for name in names]


def test_jobqueue_same_path_twice_is_queued_once() -> None:
    """A second put of a queued path is refused."""
    q = JobQueue(10)
    (a,) = paths("a.png")
    assert q.put(a) is True
    assert q.put(a) is False
    assert len(q) == 1


def test_jobqueue_hint_while_in_flight_runs_it_once_more() -> None:
    """A path hinted while a worker holds it is queued again once, after done()."""
    q = JobQueue(10)
    (a,) = paths("a.png")
    q.put(a)
    assert q.get(timeout=0) == a
    assert q.put(a) is False
    assert q.put(a) is False
    assert len(q) == 0
    q.done(a)
    assert len(q) == 1
    assert q.get(timeout=0) == a
    q.done(a)
    assert len(q) == 0
    assert q.in_flight() == 0


def test_jobqueue_done_without_new_hint_does_not_requeue() -> None:
    """A path finished with no hint meanwhile leaves the queue for good."""
    q = JobQueue(10)
    (a,) = paths("a.png")
    q.put(a)
    q.get(timeout=0)
    q.done(a)
    assert len(q) == 0
    assert q.get(timeout=0) is None


def test_jobqueue_full_queue_drops_and_sets_overflowed_without_blocking() -> None:
    """put on a full queue returns at once, drops the path and asks for a rescan once."""
    alarms: list[bool] = []
    q = JobQueue(2, on_overflow=lambda: alarms.append(True))
    a, b, c, d = paths("a.png", "b.png", "c.png", "d.png")
    assert q.put(a) and q.put(b)
    started = time.monotonic()
    assert q.put(c) is False
    assert q.put(d) is False
    assert time.monotonic() - started < 0.1
    assert len(q) == 2
    assert q.overflowed is True
    assert alarms == [True]
    assert q.take_overflow() is True
    assert q.take_overflow() is False


def test_jobqueue_put_wait_waits_for_room() -> None:
    """put_wait (for scans) blocks while the queue is full and goes in once a worker takes one."""
    q = JobQueue(1)
    a, b = paths("a.png", "b.png")
    q.put(a)
    result: list[bool] = []
    producer = threading.Thread(target=lambda: result.append(q.put_wait(b, threading.Event())))
    producer.start()
    time.sleep(0.05)
    assert result == []
    assert q.get(timeout=1) == a
    producer.join(2)
    assert result == [True]
    assert q.get(timeout=0) == b
    assert q.overflowed is False


def test_jobqueue_put_wait_gives_up_when_stop_is_set() -> None:
    """A scan blocked on a full queue returns False promptly once shutdown begins."""
    q = JobQueue(1)
    a, b = paths("a.png", "b.png")
    q.put(a)
    stop = threading.Event()
    result: list[bool] = []
    producer = threading.Thread(target=lambda: result.append(q.put_wait(b, stop, poll_s=0.01)))
    producer.start()
    stop.set()
    producer.join(2)
    assert result == [False]


def test_jobqueue_get_batch_takes_up_to_n_ready_paths() -> None:
    """get_batch returns what is ready (at most n, in order), [] when empty, None once stopped."""
    q = JobQueue(10)
    items = paths(*(f"{i}.png" for i in range(5)))
    for p in items:
        q.put(p)
    assert q.get_batch(3, timeout=0) == items[:3]
    assert q.in_flight() == 3
    assert q.get_batch(10, timeout=0) == items[3:]
    assert q.get_batch(10, timeout=0) == []
    q.stop()
    assert q.get_batch(10, timeout=0) is None


def test_retry_schedule_gives_delays_then_none() -> None:
    """Attempt n gets the n-th delay; beyond the schedule there is none."""
    schedule = RetrySchedule((1.0, 2.5))
    assert [schedule.delay(n) for n in (0, 1, 2, 3)] == [None, 1.0, 2.5, None]
    assert RetrySchedule.default().delays == (5.0, 30.0, 120.0, 600.0)


@pytest.mark.parametrize(
    "delays",
    [(-1.0,), (float("inf"),), (float("nan"),), (10.0**9,), tuple([1.0] * 21)],
    ids=["negative", "infinite", "nan", "huge", "too-many"],
)
def test_retry_schedule_invalid_delays_are_rejected(delays: tuple[float, ...]) -> None:
    """Schedules must be finite: bounded delays, bounded count."""
    with pytest.raises(ConfigError, match="invalid retry schedule"):
        RetrySchedule(delays)


def test_jobqueue_retry_holds_the_path_until_its_time() -> None:
    """A retried path comes back from get only after its backoff delay."""
    clock = FakeClock()
    q = JobQueue(10, schedule=RetrySchedule((5.0, 30.0)), clock=clock)
    (a,) = paths("a.png")
    q.put(a)
    assert q.get(timeout=0) == a
    assert q.retry(a, 1) is True
    assert (len(q), q.in_flight(), q.delayed()) == (0, 0, 1)
    assert q.put(a) is False  # already scheduled
    clock.now += 4.9
    assert q.get(timeout=0) is None
    clock.now += 0.1
    assert q.get(timeout=0) == a


def test_jobqueue_retry_beyond_schedule_returns_false_and_keeps_path_in_flight() -> None:
    """Exhausted retries are refused: the caller writes the final result and calls done."""
    q = JobQueue(10, schedule=RetrySchedule((1.0,)))
    (a,) = paths("a.png")
    q.put(a)
    q.get(timeout=0)
    assert q.retry(a, 2) is False
    assert q.in_flight() == 1
    q.done(a)
    assert q.in_flight() == 0


def test_jobqueue_stop_wakes_a_blocked_getter() -> None:
    """stop() makes a getter blocked without timeout return None promptly."""
    q = JobQueue(10)
    result: list[Path | None] = []
    getter = threading.Thread(target=lambda: result.append(q.get()))
    getter.start()
    time.sleep(0.05)
    started = time.monotonic()
    q.stop()
    getter.join(2)
    assert result == [None]
    assert time.monotonic() - started < 1.0
    assert q.put(paths("late.png")[0]) is False


def test_jobqueue_many_producers_and_workers_lose_nothing_and_never_overlap() -> None:
    """Under concurrent puts every path is processed, and never by two workers at once."""
    q = JobQueue(10_000)
    unique = paths(*(f"{i}.png" for i in range(200)))
    processed: Counter[Path] = Counter()
    active: set[Path] = set()
    overlaps: list[Path] = []
    lock = threading.Lock()

    def produce(offset: int) -> None:
        for i in range(600):
            q.put(unique[(i + offset) % len(unique)])

    def work() -> None:
        while (batch := q.get_batch(4, timeout=0.05)) is not None:
            for path in batch:
                with lock:
                    if path in active:
                        overlaps.append(path)
                    active.add(path)
                time.sleep(0)
                with lock:
                    active.discard(path)
                    processed[path] += 1
                q.done(path)

    producers = [threading.Thread(target=produce, args=(k * 37,)) for k in range(4)]
    workers = [threading.Thread(target=work) for _ in range(3)]
    for t in producers + workers:
        t.start()
    for t in producers:
        t.join(20)
    deadline = time.monotonic() + 20
    while (len(q), q.in_flight()) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    q.stop()
    for t in workers:
        t.join(5)
    assert overlaps == []
    assert set(processed) == set(unique)
    assert (len(q), q.in_flight()) == (0, 0)
