"""The Settler: when a file that events point at counts as complete (injected clock, real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.watch.settle import Settler

QUIET, SETTLE = 0.2, 2.0


@pytest.fixture
def settler() -> Settler:
    return Settler(quiet_s=QUIET, settle_s=SETTLE)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 100)
    return path


def test_settler_strong_hint_releases_after_quiet_time(settler: Settler, image: Path) -> None:
    """A close-after-write releases the file once quiet_s passed with its stat unchanged."""
    settler.hint(image, strong=True, now=0.0)
    assert settler.due(0.0) == []
    assert settler.due(QUIET / 2) == []
    assert settler.due(QUIET) == [image]
    assert settler.pending() == 0


def test_settler_weak_hint_waits_for_settle_time(settler: Settler, image: Path) -> None:
    """Created/modified events alone need settle_s of unchanged size and mtime."""
    settler.hint(image, strong=False, now=0.0)
    assert settler.due(0.0) == []
    assert settler.due(QUIET) == []
    assert settler.due(SETTLE - 0.01) == []
    assert settler.due(SETTLE) == [image]


def test_settler_file_that_grew_is_rearmed_not_released(settler: Settler, image: Path) -> None:
    """A file whose size changed between checks waits another full settle time."""
    settler.hint(image, strong=False, now=0.0)
    settler.due(0.0)
    with image.open("ab") as f:
        f.write(b"more")
    assert settler.due(SETTLE) == []
    assert settler.due(2 * SETTLE - 0.01) == []
    assert settler.due(2 * SETTLE) == [image]


def test_settler_mtime_change_alone_rearms(settler: Settler, image: Path) -> None:
    """A rewrite of the same size (mtime changed) is not complete yet."""
    settler.hint(image, strong=False, now=0.0)
    settler.due(0.0)
    os.utime(image, ns=(1, 1))
    assert settler.due(SETTLE) == []
    assert settler.due(2 * SETTLE) == [image]


def test_settler_later_events_postpone_release(settler: Settler, image: Path) -> None:
    """Each event restarts the quiet period, even when the stat did not change."""
    settler.hint(image, strong=False, now=0.0)
    settler.due(0.0)
    settler.hint(image, strong=False, now=1.5)
    assert settler.due(SETTLE) == []
    assert settler.due(1.5 + SETTLE) == [image]


def test_settler_empty_file_never_takes_the_quiet_shortcut(
    settler: Settler, tmp_path: Path
) -> None:
    """An empty file closed right after creation waits settle_s, then is released."""
    empty = tmp_path / "placeholder.png"
    empty.touch()
    settler.hint(empty, strong=True, now=0.0)
    settler.due(0.0)
    assert settler.due(QUIET) == []
    assert settler.due(SETTLE) == [empty]


def test_settler_weak_hint_after_strong_falls_back_to_settle_time(
    settler: Settler, image: Path
) -> None:
    """A modify after the close means the writer reopened the file: wait settle_s."""
    settler.hint(image, strong=True, now=0.0)
    settler.due(0.0)
    settler.hint(image, strong=False, now=0.1)
    assert settler.due(0.1 + QUIET) == []
    assert settler.due(0.1 + SETTLE) == [image]


def test_settler_strong_hint_takes_a_fresh_signature(settler: Settler, image: Path) -> None:
    """Data written before the close does not delay release beyond quiet_s after it."""
    settler.hint(image, strong=False, now=0.0)
    settler.due(0.0)
    with image.open("ab") as f:
        f.write(b"rest of the data")
    settler.hint(image, strong=True, now=1.0)
    assert settler.due(1.0) == []
    assert settler.due(1.0 + QUIET) == [image]


def test_settler_vanished_file_is_forgotten(settler: Settler, image: Path) -> None:
    """A renamed-away temp file drops out instead of being released."""
    settler.hint(image, strong=True, now=0.0)
    image.unlink()
    assert settler.due(SETTLE) == []
    assert settler.pending() == 0


def test_settler_symlink_and_folder_are_never_released(settler: Settler, image: Path) -> None:
    """Only regular files are released; symlinks and folders are forgotten."""
    link = image.with_name("link.png")
    link.symlink_to(image)
    folder = image.with_name("folder.png")
    folder.mkdir()
    for path in (link, folder):
        settler.hint(path, strong=True, now=0.0)
    settler.due(0.0)
    assert settler.due(SETTLE) == []
    assert settler.pending() == 0


def test_settler_releases_each_path_once(settler: Settler, image: Path) -> None:
    """Repeated hints before release still give one release."""
    for t in (0.0, 0.01, 0.02):
        settler.hint(image, strong=True, now=t)
    released = [p for t in (0.0, 0.1, 0.3, 1.0, 5.0) for p in settler.due(t)]
    assert released == [image]


def test_settler_next_deadline_follows_the_state(settler: Settler, image: Path) -> None:
    """Idle: None; a new hint: check now; after the first stat: quiet_s later."""
    assert settler.next_deadline() is None
    settler.hint(image, strong=True, now=3.0)
    assert settler.next_deadline() == 3.0
    settler.due(3.0)
    assert settler.next_deadline() == pytest.approx(3.0 + QUIET)


def test_settler_burst_of_weak_hints_costs_no_stats(settler: Settler, image: Path) -> None:
    """Many modify events while a file is written stat it only when its deadline comes."""
    calls: list[Path] = []

    def counting_stat(path: Path) -> os.stat_result:
        calls.append(path)
        return os.lstat(path)

    settler.hint(image, strong=False, now=0.0)
    settler.due(0.0, stat=counting_stat)
    for i in range(1000):
        settler.hint(image, strong=False, now=i / 1000)
        settler.due(i / 1000, stat=counting_stat)
    assert len(calls) == 1
    assert settler.due(1.0 + SETTLE, stat=counting_stat) == [image]


def test_settler_forget_and_forget_under_drop_candidates(settler: Settler, tmp_path: Path) -> None:
    """forget drops one path, forget_under everything inside a folder."""
    inside = [tmp_path / "album" / f"{i}.png" for i in range(3)]
    outside = tmp_path / "other.png"
    for path in [*inside, outside]:
        settler.hint(path, strong=False, now=0.0)
    settler.forget_under(tmp_path / "album")
    assert settler.pending() == 1
    settler.forget(outside)
    assert settler.pending() == 0
    assert settler.next_deadline() is None


def test_settler_rejects_negative_times() -> None:
    """Waiting times must not be negative."""
    with pytest.raises(ValueError, match="negative"):
        Settler(quiet_s=-1, settle_s=1)
