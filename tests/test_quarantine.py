"""Progress and quarantine: how long an image may be in hand, and crashes pinned on images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.config import Config, load_config
from daemon.pipeline import admit, write_quarantined
from daemon.pipeline.backends import build_context
from daemon.service.progress import MARGIN_S, Heartbeat, time_limit
from daemon.service.quarantine import CRASHES_FILE, IN_HAND_FILE, Quarantine
from daemon.service.state import ServiceState, format_status
from daemon.service.tally import Tally
from daemon.sidecar import read_sidecar, validate_sidecar
from tests.daemon_helpers import png_bytes


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def image(folder: Path, name: str = "a.png", index: int = 1) -> Path:
    """A small real PNG in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(png_bytes(index))
    return path


def crash(state: Path, *held: Path) -> list[tuple[Path, int]]:
    """A service holds ``held`` and dies; the next one starts and recovers."""
    Quarantine(state).hold(held)
    return Quarantine(state).recover()


# --- the time limit and the heartbeat ------------------------------------------------------


def test_time_limit_adds_up_every_bounded_request_backoff_and_a_margin():
    """Defaults: (3 retries + 2 chats + 1 show) x (5 + 2 x 300 s) + 2+4+8 s backoff + margin."""
    assert time_limit(Config()) == 6 * 605 + 14 + MARGIN_S


def test_time_limit_stuck_after_s_overrides_the_derived_limit():
    """watch.stuck_after_s set: that is the limit."""
    assert time_limit(Config.model_validate({"watch": {"stuck_after_s": 42}})) == 42


def test_heartbeat_stuck_only_once_something_is_held_past_the_limit():
    """Idle is never stuck; a held image is stuck once older than the limit; ending clears it."""
    clock = Clock()
    beat = Heartbeat(clock)
    assert beat.stuck(10) is None
    beat.begin("worker", "/inbox/a.png")
    clock.now += 5
    beat.begin("prefetch", "/inbox/b.png")
    clock.now += 6
    stuck = beat.stuck(10)
    assert stuck is not None and stuck[0].what == "/inbox/a.png" and stuck[1] == 11
    beat.begin("worker", "/inbox/c.png")  # progress: the next image
    assert beat.stuck(10) is None
    beat.end("worker")
    beat.end("prefetch")
    clock.now += 100
    assert beat.stuck(10) is None


# --- crash counts --------------------------------------------------------------------------


def test_quarantine_two_crashes_in_a_row_with_the_image_in_hand_quarantine_it(tmp_path):
    """First crash: a suspect. Second crash: returned for its error record."""
    path = image(tmp_path / "inbox")
    state = tmp_path / "state"
    assert crash(state, path) == []
    assert Quarantine(state).is_suspect(path) is False  # a fresh object knows nothing yet
    quarantine = Quarantine(state)
    quarantine.hold([path])  # (what the second run's worker does before dying)
    assert Quarantine(state).recover() == [(path, 2)]


def test_quarantine_suspect_is_cleared_when_finished(tmp_path):
    """A suspect that gets through is forgiven: the next crash counts from one again."""
    path = image(tmp_path / "inbox")
    state = tmp_path / "state"
    Quarantine(state).hold([path])  # a run dies with it in hand
    quarantine = Quarantine(state)
    assert quarantine.recover() == []
    assert quarantine.is_suspect(path)
    quarantine.hold([path])
    quarantine.release([path])
    assert not quarantine.is_suspect(path)
    assert crash(state, path) == []  # one crash again, not two


def test_quarantine_changed_file_starts_afresh(tmp_path):
    """The count is for the file as it was: a new version is not blamed for the old one."""
    path = image(tmp_path / "inbox")
    state = tmp_path / "state"
    crash(state, path)
    path.write_bytes(png_bytes(2) + b"different")
    assert crash(state, path) == []


def test_quarantine_streak_broken_by_a_crash_it_was_not_part_of(tmp_path):
    """Consecutive means consecutive: a crash with other images in hand resets the count."""
    first = image(tmp_path / "inbox", "a.png", 1)
    other = image(tmp_path / "inbox", "b.png", 2)
    state = tmp_path / "state"
    crash(state, first)
    crash(state, other)
    assert crash(state, first) == []


def test_quarantine_clean_stop_leaves_nothing_to_count(tmp_path):
    """A clean stop empties the in-hand list: the next start counts no crash."""
    path = image(tmp_path / "inbox")
    state = tmp_path / "state"
    quarantine = Quarantine(state)
    quarantine.hold([path])
    quarantine.clear()
    assert Quarantine(state).recover() == []
    assert (state / IN_HAND_FILE).exists() and (state / CRASHES_FILE).exists()


def test_quarantine_non_utf8_path_round_trips_through_its_files(tmp_path):
    """A Latin-1 name (a lone surrogate in Python) is remembered exactly."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    path = Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png"))
    path.write_bytes(png_bytes(3))
    state = tmp_path / "state"
    crash(state, path)
    Quarantine(state).hold([path])
    assert Quarantine(state).recover() == [(path, 2)]


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"schema": "other", "entries": 5}'])
def test_quarantine_unreadable_state_files_count_nothing(tmp_path, content):
    """A damaged state file is not a crash record: recovery starts clean."""
    state = tmp_path / "state"
    state.mkdir()
    (state / IN_HAND_FILE).write_bytes(content)
    (state / CRASHES_FILE).write_bytes(content)
    assert Quarantine(state).recover() == []


# --- the record --------------------------------------------------------------------------


def test_write_quarantined_error_record_holds_until_the_file_changes(tmp_path):
    """status error, kind quarantined, the reason; fresh while unchanged, stale once changed."""
    inbox = tmp_path / "inbox"
    path = image(inbox)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"inbox: {inbox}\ncache_dir: {tmp_path / 'cache'}\n", encoding="utf-8")
    ctx = build_context(load_config(config_path, {"HOME": str(tmp_path)}))
    result = write_quarantined(path, ctx, "promptd crashed twice while processing it")
    assert result.outcome == "error"
    doc = read_sidecar(inbox / "a.json")
    assert doc is not None and validate_sidecar(doc) == []
    assert doc["error"] == {
        "kind": "quarantined",
        "message": "promptd crashed twice while processing it",
    }
    assert not (inbox / "a.txt").exists()
    skipped = admit(path, ctx)
    assert getattr(skipped, "reason", None) == "up to date (fresh)"
    path.write_bytes(png_bytes(9))
    assert not hasattr(admit(path, ctx), "outcome")  # changed: admitted again


# --- symlinks in the status ----------------------------------------------------------------


def test_tally_counts_each_symlink_once_and_the_status_says_why():
    """One notice per link per run; `promptd status` counts them and says what to do."""
    tally = Tally()
    assert tally.note_symlink(Path("/inbox/link.png"))
    assert not tally.note_symlink(Path("/inbox/link.png"))
    assert tally.note_symlink(Path("/inbox/linked-folder"))
    state = tally.snapshot(queue=0, ollama="up", clip_device="cpu")
    assert state.symlinks == 2
    shown = format_status(state, now=state.updated_at, alive=True)
    assert "symlinks:     2 not followed (promptd never follows links" in shown


def test_format_status_shows_hidden_characters_in_names_as_escapes():
    """A held folder named with ESC or a bidi override cannot act on the terminal."""
    from daemon.service.state import HeldFolder

    state = ServiceState(
        pid=1,
        started_at=Tally().started_at,
        updated_at=Tally().started_at,
        held_folders=(HeldFolder("/inbox/\x1b[2Jevil\u202e", "bad \udce9 rule"),),
    )
    shown = format_status(state, now=state.updated_at, alive=True)
    assert "\x1b" not in shown and "\u202e" not in shown
    assert "/inbox/\\x1b[2Jevil\\u202e: bad \\udce9 rule" in shown
