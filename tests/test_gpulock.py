"""The GPU lock: mutual exclusion, re-entry, and the priority lane the HTTP API uses."""

from __future__ import annotations

import threading

import pytest

from daemon.service.gpulock import GpuLock
from tests.daemon_helpers import wait_until


def _blocked_on(lock: GpuLock, count: int) -> bool:
    """True once ``count`` threads wait inside the lock's condition."""
    return len(getattr(lock._cond, "_waiters", ())) >= count


def test_gpulock_same_thread_reenters_without_blocking() -> None:
    """A holder may take the lock again (CLIP's load nests a turn inside a turn)."""
    lock = GpuLock()
    with lock, lock:
        assert lock.acquisitions == 1
    with lock:
        assert lock.acquisitions == 2


def test_gpulock_second_thread_waits_for_the_holder() -> None:
    """Two threads never hold the lock at once."""
    lock = GpuLock()
    order: list[str] = []
    with lock:
        other = threading.Thread(target=lambda: _turn(lock, order, "other"))
        other.start()
        wait_until(lambda: _blocked_on(lock, 1), 10, "the second thread to wait")
        order.append("first done")
    other.join(10)
    assert order == ["first done", "other"]


def test_gpulock_priority_waiter_goes_before_an_earlier_folder_waiter() -> None:
    """When the holder lets go, an interactive request is served before queued folder work."""
    lock = GpuLock()
    order: list[str] = []

    def folder() -> None:
        with lock:
            order.append("folder")

    def request() -> None:
        with lock.priority(), lock:
            order.append("request")

    with lock:
        threads = [threading.Thread(target=folder)]
        threads[0].start()
        wait_until(lambda: _blocked_on(lock, 1), 10, "the folder thread to wait")
        threads.append(threading.Thread(target=request))
        threads[1].start()
        wait_until(lambda: _blocked_on(lock, 2), 10, "the request thread to wait")
    for thread in threads:
        thread.join(10)
    assert order == ["request", "folder"]


def test_gpulock_claim_keeps_folder_work_out_between_a_requests_turns() -> None:
    """From its first turn until it leaves priority(), a request is not interleaved with folder work."""
    lock = GpuLock()
    order: list[str] = []
    folder = threading.Thread(target=lambda: _turn(lock, order, "folder"))
    with lock.priority():
        _turn(lock, order, "clip")
        folder.start()
        wait_until(lambda: _blocked_on(lock, 1), 10, "the folder thread to wait for the claim")
        _turn(lock, order, "ollama")
        assert lock.claimed
    folder.join(10)
    assert order == ["clip", "ollama", "folder"]
    assert lock.priority_acquisitions == 2
    assert not lock.claimed


def test_gpulock_claim_not_taken_before_the_first_turn() -> None:
    """A request still decoding (no turn yet) does not hold folder work up."""
    lock = GpuLock()
    order: list[str] = []
    with lock.priority():
        folder = threading.Thread(target=lambda: _turn(lock, order, "folder"))
        folder.start()
        folder.join(10)
        assert order == ["folder"]


def test_gpulock_folder_work_waits_for_claims_only_as_long_as_its_patience() -> None:
    """Past claim_patience_s, folder work takes its turn even while a claim stands."""
    lock = GpuLock(claim_patience_s=0.0)
    order: list[str] = []
    with lock.priority():
        _turn(lock, order, "request")
        folder = threading.Thread(target=lambda: _turn(lock, order, "folder"))
        folder.start()
        folder.join(10)
        assert order == ["request", "folder"]


def test_gpulock_cpu_turn_runs_beside_a_holder_but_keeps_the_priority_order() -> None:
    """CLIP on the CPU takes no turn (it runs while the LLM holds the lock); a request's CPU
    CLIP claims the lane, and folder CPU work waits for the claim to end."""
    lock = GpuLock()
    order: list[str] = []

    def folder_cpu() -> None:
        with lock.cpu_turn():
            order.append("folder cpu")

    holder = threading.Event()
    release = threading.Event()

    def llm() -> None:
        with lock:
            holder.set()
            release.wait(10)

    ollama = threading.Thread(target=llm)
    ollama.start()
    holder.wait(10)
    with lock.cpu_turn():  # beside the holder: no turn taken
        order.append("beside the llm")
    release.set()
    ollama.join(10)
    with lock.priority():
        with lock.cpu_turn():
            order.append("request cpu")
        assert lock.claimed
        folder = threading.Thread(target=folder_cpu)
        folder.start()
        wait_until(lambda: _blocked_on(lock, 1), 10, "folder CPU work to wait for the claim")
        order.append("request done")
    folder.join(10)
    assert order == ["beside the llm", "request cpu", "request done", "folder cpu"]
    assert lock.acquisitions == 1 and not lock.claimed


def test_gpulock_cpu_turn_is_a_no_op_when_not_exclusive() -> None:
    """Without gpu.exclusive there is no priority lane to keep."""
    lock = GpuLock(exclusive=False)
    with lock.priority(), lock.cpu_turn():
        assert not lock.claimed


def test_gpulock_release_by_another_thread_raises() -> None:
    """Releasing a lock one does not hold is a programming error, reported at once."""
    lock = GpuLock()
    lock.__enter__()
    errors: list[BaseException] = []

    def release() -> None:
        try:
            lock.__exit__(None, None, None)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=release)
    thread.start()
    thread.join(10)
    lock.__exit__(None, None, None)
    assert len(errors) == 1


@pytest.mark.parametrize("priority", [False, True])
def test_gpulock_not_exclusive_lets_threads_overlap(priority: bool) -> None:
    """With gpu.exclusive false the lock and its priority lane do nothing."""
    lock = GpuLock(exclusive=False)
    inside = threading.Event()
    with lock:
        thread = threading.Thread(target=lambda: _enter_and_flag(lock, inside, priority))
        thread.start()
        thread.join(10)
    assert inside.is_set()
    assert lock.acquisitions == 0


def _turn(lock: GpuLock, order: list[str], name: str) -> None:
    with lock:
        order.append(name)


def _enter_and_flag(lock: GpuLock, flag: threading.Event, priority: bool) -> None:
    if priority:
        with lock.priority(), lock:
            flag.set()
    else:
        with lock:
            flag.set()
