"""The service's bookkeeping: counts, held folders and the last error."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from daemon.records import Result
from daemon.service.tally import Tally


def test_tally_counts_outcomes_and_keeps_the_last_failure() -> None:
    """ok/degraded/error are counted; the newest error is the one reported."""
    tally = Tally()
    at = datetime(2026, 1, 2, tzinfo=timezone.utc)
    tally.record(Result(Path("/in/a.png"), "ok"))
    tally.record(Result(Path("/in/b.png"), "degraded", "Ollama down"))
    tally.record(Result(Path("/in/c.png"), "error", "truncated"), now=at)
    state = tally.snapshot(queue=3, ollama="down", clip_device="cpu")
    assert (state.done, state.degraded, state.failed, state.queue) == (1, 1, 1, 3)
    assert state.last_error is not None and state.last_error.path == "/in/c.png"
    assert state.last_error.at == at
    assert tally.status_line(3) == "queue 3, done 1, degraded 1, failed 1, held folders 0"


def test_tally_held_folders_are_released_by_a_rescan_of_their_folder() -> None:
    """A held folder is listed until its folder (or an ancestor) is rescanned."""
    tally = Tally()
    tally.record(Result(Path("/in/set/a.png"), "held", "bad rule"))
    tally.record(Result(Path("/in/other/b.png"), "held", "bad rule"))
    assert set(tally.held) == {"/in/set", "/in/other"}
    tally.release_held(Path("/in/set"))
    assert set(tally.held) == {"/in/other"}
    tally.release_held(Path("/in"))
    assert tally.held == {}
