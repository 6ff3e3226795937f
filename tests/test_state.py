"""The status file: written atomically by the service, read and reported by `promptd status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from daemon.errors import PromptdError, TransientError
from daemon.service.state import (
    STATE_FILE_NAME,
    HeldFolder,
    LastError,
    ServiceState,
    format_duration,
    format_status,
    pid_alive,
    read_state,
    state_path,
    write_state,
)

STARTED = datetime(2026, 8, 1, 9, 0, 0, tzinfo=timezone.utc)
NOW = STARTED + timedelta(hours=2, minutes=5)


def busy_state(**changes: object) -> ServiceState:
    """A state with every field set, as a busy service would write it."""
    fields: dict[str, object] = {
        "pid": 4242,
        "started_at": STARTED,
        "updated_at": NOW - timedelta(seconds=10),
        "queue": 17,
        "in_progress": ("/srv/promptd/inbox/cats/a.jpg", "/srv/promptd/inbox/cats/b.png"),
        "done": 120,
        "degraded": 3,
        "failed": 1,
        "skipped": 40,
        "held_folders": (
            HeldFolder("/srv/promptd/inbox/portraits", "mode: 'fast' is not one of speed, quality"),
        ),
        "last_error": LastError(
            "/srv/promptd/inbox/broken.jpg", "image file is truncated", NOW - timedelta(minutes=3)
        ),
        "ollama": "up",
        "clip_device": "cuda:0",
        "version": "0.1.0",
    }
    fields.update(changes)
    return ServiceState(**fields)  # type: ignore[arg-type]


def finished_pid() -> int:
    """The pid of a process that has already exited."""
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(process.stdout)


def test_write_state_then_read_state_round_trips_every_field(tmp_path: Path) -> None:
    """What the service writes is exactly what `promptd status` reads back."""
    path = state_path(tmp_path)
    state = busy_state()

    write_state(path, state)

    assert path.name == STATE_FILE_NAME
    assert read_state(path) == state


def test_write_state_is_plain_json_with_schema_and_utc_times(tmp_path: Path) -> None:
    """The file is a JSON object other tools can read: schema tag, ISO 8601 UTC times."""
    path = tmp_path / "status.json"
    write_state(
        path,
        busy_state(started_at=datetime(2026, 8, 1, 11, 0, tzinfo=timezone(timedelta(hours=2)))),
    )

    doc = json.loads(path.read_text())
    assert doc["schema"] == "promptd.state/1"
    assert doc["started_at"] == "2026-08-01T09:00:00Z"
    assert doc["held_folders"] == [
        {
            "path": "/srv/promptd/inbox/portraits",
            "problem": "mode: 'fast' is not one of speed, quality",
        }
    ]
    assert doc["last_error"]["at"] == "2026-08-01T11:02:00Z"


def test_write_state_replacing_old_file_leaves_no_temp_files(tmp_path: Path) -> None:
    """Rewriting the status many times leaves only status.json in the folder."""
    path = tmp_path / "state" / "status.json"
    for done in range(5):
        write_state(path, busy_state(done=done))

    assert [p.name for p in path.parent.iterdir()] == ["status.json"]
    state = read_state(path)
    assert state is not None
    assert state.done == 4


def test_write_state_with_custom_writer_hands_it_the_bytes(tmp_path: Path) -> None:
    """A writer callable replaces the default atomic write (for the service's own helper)."""
    calls: list[tuple[Path, bytes]] = []
    path = tmp_path / "status.json"

    write_state(path, busy_state(), writer=lambda p, data: calls.append((p, data)))

    assert [p for p, _ in calls] == [path]
    assert json.loads(calls[0][1])["pid"] == 4242
    assert not path.exists()


def test_write_state_where_folder_cannot_be_made_raises_transient_error(tmp_path: Path) -> None:
    """A state folder blocked by a plain file is a TransientError naming the folder."""
    blocker = tmp_path / "state"
    blocker.write_text("not a folder")

    with pytest.raises(TransientError, match="cannot create the state folder") as caught:
        write_state(blocker / "status.json", busy_state())
    assert caught.value.path == blocker


def test_read_state_without_file_is_none(tmp_path: Path) -> None:
    """No status file means the service never ran with this state folder."""
    assert read_state(tmp_path / "status.json") is None


@pytest.mark.parametrize(
    "content", [b"{not json", b"[]", b'{"schema": "other/1"}', b'{"schema": "promptd.state/1"}']
)
def test_read_state_with_garbage_raises_with_path(tmp_path: Path, content: bytes) -> None:
    """A file that is not a status document is reported with its path and what to do."""
    path = tmp_path / "status.json"
    path.write_bytes(content)

    with pytest.raises(PromptdError, match="not a readable promptd status file") as caught:
        read_state(path)
    assert caught.value.path == path


def test_pid_alive_for_this_process_is_true() -> None:
    """The current process is alive."""
    assert pid_alive(os.getpid())


def test_pid_alive_for_exited_or_invalid_pid_is_false() -> None:
    """An exited process, pid 0 and negative pids are not alive (and signal nothing)."""
    assert not pid_alive(finished_pid())
    assert not pid_alive(0)
    assert not pid_alive(-1)


def test_format_status_running_shows_pid_uptime_queue_and_counts() -> None:
    """A live service is reported as running, with uptime, queue and every count."""
    report = format_status(busy_state(), now=NOW, alive=True)

    assert report.startswith("promptd is running (pid 4242), up 2h 05m.")
    assert "17 waiting, 2 in progress" in report
    assert "/srv/promptd/inbox/cats/a.jpg" in report
    assert "done:         120   degraded: 3   failed: 1   skipped: 40" in report
    assert "ollama:       up" in report
    assert "clip device:  cuda:0" in report
    assert "Warning" not in report


def test_format_status_with_held_folders_and_error_names_them() -> None:
    """Held folders show with their rule problem; the last error shows path and message."""
    report = format_status(busy_state(), now=NOW, alive=True)

    assert "held folders (1; fix the rule file to release):" in report
    assert "/srv/promptd/inbox/portraits: mode: 'fast' is not one of speed, quality" in report
    assert (
        "last error:   2026-08-01T11:02:00Z /srv/promptd/inbox/broken.jpg: image file is truncated"
        in report
    )


def test_format_status_idle_says_none_for_held_and_errors() -> None:
    """A quiet service says plainly that nothing is held and nothing failed."""
    report = format_status(
        busy_state(held_folders=(), last_error=None, in_progress=()), now=NOW, alive=True
    )

    assert "held folders: none" in report
    assert "last error:   none" in report


def test_format_status_without_state_says_not_running() -> None:
    """No status file: not running, and how to start it."""
    report = format_status(None, now=NOW, alive=False)

    assert report.startswith("promptd is not running")
    assert "systemctl start promptd" in report


def test_format_status_with_exited_pid_says_not_running_and_shows_last_state() -> None:
    """A status file left by a dead process is called stale, with the last known counts."""
    pid = finished_pid()
    state = busy_state(pid=pid, updated_at=NOW - timedelta(hours=3))

    report = format_status(state, now=NOW, alive=pid_alive(pid))

    assert report.startswith(
        f"promptd is not running: pid {pid} has exited (last update 3h 00m ago)."
    )
    assert "journalctl -u promptd" in report
    assert "Last known state" in report
    assert "done:         120" in report


def test_format_status_alive_but_not_updated_warns_it_may_be_stuck() -> None:
    """A live pid whose status is older than stale_after is reported as possibly stuck."""
    state = busy_state(updated_at=NOW - timedelta(minutes=10))

    report = format_status(state, now=NOW, alive=True, stale_after=timedelta(minutes=2))

    assert "promptd is running (pid 4242)" in report
    assert "Warning: the status has not been updated for 10m 00s" in report


def test_format_status_with_many_in_progress_shows_only_a_few() -> None:
    """A long in-progress list is cut to five paths and a count."""
    paths = tuple(f"/srv/promptd/inbox/{n}.jpg" for n in range(8))

    report = format_status(busy_state(in_progress=paths), now=NOW, alive=True)

    assert "/srv/promptd/inbox/4.jpg" in report
    assert "/srv/promptd/inbox/5.jpg" not in report
    assert "... and 3 more" in report


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45.9, "45s"),
        (725, "12m 05s"),
        (3 * 3600 + 420, "3h 07m"),
        (2 * 86400 + 4 * 3600, "2d 04h"),
        (-5, "0s"),
    ],
)
def test_format_duration_picks_two_largest_units(seconds: float, text: str) -> None:
    """Durations read as the two largest units, never negative."""
    assert format_duration(seconds) == text
