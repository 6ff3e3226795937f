"""The health thread: once a result was degraded, poll Ollama until it answers, then redo.

A degraded result (Ollama down, a model missing) sets ``live.degraded_seen``; this thread then
lists Ollama's models with a doubling delay (``watch.recheck_s`` up to five minutes). When
Ollama answers, the composer's circuit breaker is reset and every inbox is rescanned with
degraded results counted as pending, so they are redone with the real model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from daemon.errors import PromptdError
from daemon.service.live import Live

log = structlog.get_logger("promptd.service")

MAX_DELAY_S = 300.0


class HealthWatch:
    """Brings degraded results back once Ollama answers again."""

    def __init__(self, live: Live, rescan_degraded: Callable[[], None]) -> None:
        self._live = live
        self._rescan_degraded = rescan_degraded
        self.thread = threading.Thread(target=self._run, name="promptd-health", daemon=True)

    def _run(self) -> None:
        live = self._live
        first = delay = live.config.watch.recheck_s
        while not live.stop.is_set():
            if not live.degraded_seen.wait(1.0):
                continue
            try:
                live.llm.list_models()
            except PromptdError:
                live.ollama_up = False
                live.stop.wait(delay)
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            live.ollama_up = True
            live.ctx.composer.reset()
            live.degraded_seen.clear()
            log.info("ollama_back", action="redoing degraded results")
            self._rescan_degraded()
            live.stop.wait(delay)
            delay = min(delay * 2, MAX_DELAY_S) if live.degraded_seen.is_set() else first
