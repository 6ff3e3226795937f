"""The queue's ready paths, one lane per Ollama model, and the order they are handed out in.

A small GPU holds one model; a switch costs a load (seconds) and the prompt cache. So the
queue keeps handing out images for the model it handed out last, and switches when none of
those is left ("none left") or when the oldest image for another model has waited longer than
``switch_after_s`` ("waited too long": a bound, so no folder starves; the wait counts from
the image's arrival or from when its model was last served, whichever is later). Images that need no
model (``clip`` mode, or not classifiable: they end as skipped or held) ride along in any
batch and never cause a switch; they too are taken first once they waited past the bound.
``switch_after_s`` 0 is plain arrival order. Not thread-safe: the JobQueue's lock guards it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("promptd.service")

Key = str | None  # the Ollama model an image will use; None: none


@dataclass(frozen=True)
class _Waiting:
    seq: int  # arrival order across lanes
    since: float  # the queue clock's reading when it became ready
    path: Path


class Lanes:
    """Ready paths by model, in arrival order within each lane."""

    def __init__(self) -> None:
        self._lanes: dict[Key, deque[_Waiting]] = {}
        self._seq = itertools.count()
        self._count = 0
        self._served: dict[Key, float] = {}  # when each lane last had an image handed out
        self.current: Key = None  # the model of the last image handed out
        self.switches = 0  # model changes between images handed out

    def __len__(self) -> int:
        return self._count

    def append(self, path: Path, key: Key, now: float) -> None:
        """``path`` is ready, for model ``key``, since ``now``."""
        self._lanes.setdefault(key, deque()).append(_Waiting(next(self._seq), now, path))
        self._count += 1

    def take(self, max_n: int, now: float, switch_after_s: float) -> list[Path]:
        """Up to ``max_n`` paths (at least one when any is ready), in the order to run them."""
        batch: list[Path] = []
        if switch_after_s <= 0:
            while self._count and len(batch) < max_n:
                heads = self._heads()
                key = self._oldest(heads)
                self._note(key, "arrival order", now - heads[key].since)
                batch.append(self._pop(key, now))
            return batch
        heads = self._heads()
        if not heads:
            return batch
        key, reason = self._choose(heads, now, switch_after_s)
        self._note(key, reason, now - heads[key].since)
        rider = None if key is not None else self.current  # fill with what costs no switch
        for lane in (key, rider):
            while lane in self._lanes and len(batch) < max_n:
                batch.append(self._pop(lane, now))
        return batch

    def _note(self, key: Key, reason: str, waited_s: float) -> None:
        """Images for ``key`` are handed out now: log and count a change of model."""
        if key is None or key == self.current:
            return
        level = log.debug if reason == "arrival order" else log.info
        level(
            "model_switch",
            to=key,
            previous=self.current,
            reason=reason,
            waited_s=round(waited_s, 1),
        )
        self.switches += self.current is not None
        self.current = key

    def _choose(
        self, heads: dict[Key, _Waiting], now: float, switch_after_s: float
    ) -> tuple[Key, str]:
        """The lane to take from, and why (for the switch's log line)."""
        overdue = {
            k: w
            for k, w in heads.items()
            if k != self.current and now - self._waiting_since(k, w) > switch_after_s
        }
        if overdue:
            return self._oldest(overdue), "waited too long"
        if self.current in heads:
            return self.current, "same model"
        models: dict[Key, _Waiting] = {k: w for k, w in heads.items() if k is not None}
        return (self._oldest(models) if models else None), "none left"

    def _waiting_since(self, key: Key, head: _Waiting) -> float:
        """Since when ``key``'s lane has waited: its oldest image's arrival, or the last time
        it was served if later (so two long backlogs alternate once per bound, not per batch)."""
        return max(head.since, self._served.get(key, head.since))

    def _heads(self) -> dict[Key, _Waiting]:
        return {k: lane[0] for k, lane in self._lanes.items() if lane}

    @staticmethod
    def _oldest(heads: dict[Key, _Waiting]) -> Key:
        return min(heads.items(), key=lambda item: item[1].seq)[0]

    def _pop(self, key: Key, now: float) -> Path:
        self._served[key] = now
        lane = self._lanes[key]
        waiting = lane.popleft()
        if not lane:
            del self._lanes[key]
        self._count -= 1
        return waiting.path


def classify_safely(classify: Callable[[Path], Key] | None, path: Path) -> Key:
    """The model ``path`` will use (asked without the queue's lock: it reads rule files)."""
    if classify is None:
        return None
    try:
        return classify(path)
    except Exception:  # ordering is a hint: never lose the path over it
        log.debug("classify_failed", path=str(path), exc_info=True)
        return None
