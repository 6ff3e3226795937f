"""The in-process GPU lock: CLIP inference and Ollama requests take turns on a small card.

On a 4 GB GPU, CLIP's activations and an Ollama model's KV cache do not fit at once; one lock
held around every CLIP forward pass and every Ollama request that makes a model work keeps
them apart. With ``gpu.exclusive: false`` the lock is a no-op and the stages overlap.

Interactive requests (the HTTP API) go first: a thread inside ``priority()`` *claims* the
lock from its first turn until it leaves ``priority()``, and while any claim stands, folder
work waits. A request in front of a 10,000-image backlog therefore waits for at most the one
model call in progress when it arrived, not for one call per turn it takes. The claim starts
at the first turn, not at ``priority()``, so a request that is still decoding or loading CLIP
(which takes the analyzer's own lock, possibly held by a folder thread waiting for the GPU)
holds nobody up. Inside a claim, take no lock that a thread waiting for the GPU may hold; as
a guard against such a mistake, and against a stream of requests starving the folder, folder
work waits for claims at most ``claim_patience_s`` before it takes its turn anyway (it still
never shares the GPU: only the order changes).

With ``ollama.parallel`` above 1 the worker holds the lock around a whole LLM phase (the N
requests of a batch together) and runs the requests on helper threads inside ``covered()``:
there the lock is already held on their behalf, so their turns pass at once. Such a phase
takes only LLM requests: CLIP work (clip_prompt) comes after it, with its own turns.

CLIP on the CPU takes no turns (it uses nothing the LLM needs) but goes through
``cpu_turn()``: an interactive request's CLIP claims the lane there, and folder CLIP waits for
claims, so a request is not slowed by the backlog's CLIP batches competing for the cores.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from types import TracebackType


class GpuLock:
    """A re-entrant lock with a priority lane; counts how long holders waited (for `status`)."""

    def __init__(self, exclusive: bool = True, *, claim_patience_s: float = 60.0) -> None:
        self.exclusive = exclusive
        self.claim_patience_s = claim_patience_s
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._claims = 0  # priority threads that have taken a turn and not yet left priority()
        self._local = threading.local()
        self.acquisitions = 0
        self.priority_acquisitions = 0
        self.waited_s = 0.0

    def __enter__(self) -> GpuLock:
        if self.exclusive and not getattr(self._local, "covered", False):
            self._acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.exclusive and not getattr(self._local, "covered", False):
            self._release()

    @contextlib.contextmanager
    def covered(self) -> Iterator[None]:
        """On a helper thread of a holder that waits for it: the block's turns are covered by
        the holder's, so they pass without taking the lock (for the parallel LLM phase)."""
        self._local.covered = True
        try:
            yield
        finally:
            self._local.covered = False

    @contextlib.contextmanager
    def cpu_turn(self) -> Iterator[None]:
        """For model work on the CPU (CLIP with ``clip.device: cpu``): it takes no turn, so it
        runs beside the LLM, but keeps the priority lane's order, since it shares the CPU with
        an interactive request's own stages: inside ``priority()`` the claim starts here, and
        folder work waits while claims stand (at most ``claim_patience_s``)."""
        if self.exclusive:
            lane: dict[str, bool] | None = getattr(self._local, "priority", None)
            with self._cond:
                if lane is not None and not lane["claimed"]:
                    lane["claimed"] = True
                    self._claims += 1
                patience = time.monotonic() + self.claim_patience_s
                while lane is None and self._claims > 0:
                    left = patience - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
        yield

    @property
    def held(self) -> bool:
        """Whether some thread holds the lock now."""
        with self._cond:
            return self._owner is not None

    @contextlib.contextmanager
    def priority(self) -> Iterator[None]:
        """Run the block's turns ahead of folder work (re-entrant; a no-op when not exclusive)."""
        local = self._local
        outer = getattr(local, "priority", None)
        if outer is None:
            local.priority = {"claimed": False}
        try:
            yield
        finally:
            if outer is None:
                claimed = local.priority["claimed"]
                del local.priority
                if claimed:
                    with self._cond:
                        self._claims -= 1
                        self._cond.notify_all()

    @property
    def claimed(self) -> bool:
        """True while an interactive request holds a claim (folder work waits)."""
        with self._cond:
            return self._claims > 0

    def _acquire(self) -> None:
        me = threading.get_ident()
        lane: dict[str, bool] | None = getattr(self._local, "priority", None)
        started = time.perf_counter()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            if lane is not None and not lane["claimed"]:
                lane["claimed"] = True
                self._claims += 1
            patience = time.monotonic() + self.claim_patience_s
            while self._owner is not None or (lane is None and self._claims > 0):
                if self._owner is not None:
                    self._cond.wait()
                    continue
                left = patience - time.monotonic()  # waiting only for interactive claims
                if left <= 0:
                    break
                self._cond.wait(left)
            self._owner, self._depth = me, 1
            self.acquisitions += 1
            self.priority_acquisitions += lane is not None
            self.waited_s += time.perf_counter() - started

    def _release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("the GPU lock is released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()
