"""Whether the worker is making progress: what it has in hand, since when, and how long is
too long. The main loop pings the systemd watchdog only while nothing has been in hand
longer than ``time_limit(config)``, so a worker wedged on one image gets the service
restarted instead of sitting silently alive.

The limit is the longest an image can legitimately take: every Ollama response is bounded
(``pipeline.compose.bounded``: connect_s + read_s from the request, plus one more chunk's
read_s), an image makes at most retries + 2 chat requests and one capability lookup, with
the backoff waits between them; CLIP, decoding and writing get a fixed margin.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from daemon.config import Config

log = structlog.get_logger("promptd.service")

MARGIN_S = 300.0  # CLIP (a lazy model load included), decoding, writing


def time_limit(config: Config) -> float:
    """Seconds an image may stay in hand before the worker counts as stuck."""
    if config.watch.stuck_after_s is not None:
        return config.watch.stuck_after_s
    ollama = config.ollama
    request = ollama.timeout.connect_s + 2 * ollama.timeout.read_s
    requests = ollama.retries + 2 + 1  # transient retries, one widened retry, /api/show
    waits = ollama.backoff_s * (2**ollama.retries - 1)
    return float(requests * request + waits + MARGIN_S)


@dataclass(frozen=True)
class InHand:
    """One thing a thread is working on."""

    slot: str  # "worker" or "prefetch"
    what: str  # a path, or a count of images being decoded
    since: float  # the clock's reading when it was taken


class Heartbeat:
    """What each worker thread has in hand; thread-safe, cheap enough to call per image."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[str, InHand] = {}

    def begin(self, slot: str, what: str) -> None:
        """``slot`` now works on ``what`` (replacing whatever it had)."""
        with self._lock:
            self._slots[slot] = InHand(slot, what, self._clock())

    def end(self, slot: str) -> None:
        """``slot`` is idle."""
        with self._lock:
            self._slots.pop(slot, None)

    def in_hand(self) -> list[InHand]:
        """Everything in hand now, oldest first."""
        with self._lock:
            return sorted(self._slots.values(), key=lambda item: item.since)

    def stuck(self, limit_s: float) -> tuple[InHand, float] | None:
        """The oldest thing in hand and its age, when it has been in hand over ``limit_s``."""
        held = self.in_hand()
        if not held:
            return None
        age = self._clock() - held[0].since
        return (held[0], age) if age > limit_s else None


class StuckWatch:
    """Whether the worker is progressing, saying once when it stops and once when it moves."""

    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat
        self._reported = False

    def progressing(self, limit_s: float, *, watchdog: bool) -> bool:
        """False while something has been in hand past ``limit_s``; logs the change once."""
        stuck = self.heartbeat.stuck(limit_s)
        if stuck is None:
            if self._reported:
                log.info("worker_progressing")
                self._reported = False
            return True
        if not self._reported:
            held, age = stuck
            action = (
                "withholding the systemd watchdog ping: systemd will restart promptd"
                if watchdog
                else "no systemd watchdog is set: restart promptd"
            )
            log.error(
                "worker_stuck",
                path=held.what,
                thread=held.slot,
                seconds=round(age),
                limit_s=round(limit_s),
                action=action,
            )
            self._reported = True
        return False
