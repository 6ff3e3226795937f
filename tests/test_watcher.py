"""The watcher with a real watchdog observer on a real temporary inbox, plus its pure helpers
(event mapping, the tree walk, filesystem facts)."""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
)
from watchdog.observers.api import BaseObserver

from daemon.config import WatchSettings
from daemon.errors import ConfigError
from daemon.fs.treewalk import count_folders
from daemon.watch import fsinfo
from daemon.watch.eventmap import Action, actions_for
from daemon.watch.observers import OVERFLOW_LOGGER, ObserverKind, make_observer
from daemon.watch.watcher import Watcher, scan

# watchdog itself warns when `mkdir -p` makes it watch a folder twice; harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
FAST = WatchSettings(quiet_s=0.1, settle_s=0.3, poll_interval_s=0.1)


def is_candidate(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class Recorder:
    """Collects the watcher's callbacks (and each released file's size and time)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.sizes: dict[Path, int] = {}
        self.times: dict[Path, float] = {}
        self.lock = threading.Lock()

    def ready(self, path: Path) -> None:
        size = path.stat().st_size
        with self.lock:
            self.sizes[path] = size
            self.times[path] = time.monotonic()
            self.calls.append(("ready", path))

    def add(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def of(self, kind: str) -> list[Any]:
        with self.lock:
            return [c[1] if len(c) == 2 else c[1:] for c in self.calls if c[0] == kind]


WatcherFactory = Callable[..., tuple[Watcher, Recorder]]


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.fixture
def start_watcher(inbox: Path) -> Iterator[WatcherFactory]:
    started: list[Watcher] = []

    def start(settings: WatchSettings = FAST, **kwargs: Any) -> tuple[Watcher, Recorder]:
        rec = Recorder()
        watcher = Watcher(
            [inbox],
            settings,
            is_candidate=is_candidate,
            on_ready=kwargs.pop("on_ready", rec.ready),
            on_rule_change=lambda folder: rec.add("rules", folder),
            on_removed=lambda path: rec.add("removed", path),
            on_moved=lambda src, dest: rec.add("moved", src, dest),
            needs_rescan=lambda reason: rec.add("rescan", reason),
            supervise_s=0.1,
            **kwargs,
        )
        watcher.start()
        started.append(watcher)
        return watcher, rec

    yield start
    for watcher in started:
        watcher.stop()


def settle_grace() -> None:
    """Long enough for a duplicate release to show up, if there were one."""
    time.sleep(FAST.settle_s + 0.3)


# --- the watcher, end to end -------------------------------------------------------------------


def test_watcher_copied_file_is_released_once(
    start_watcher: WatcherFactory, inbox: Path, outside: Path
) -> None:
    """A file copied in is released once, at its full size."""
    _, rec = start_watcher()
    source = outside / "photo.png"
    source.write_bytes(b"p" * 50_000)
    shutil.copyfile(source, inbox / "photo.png")
    assert wait_for(lambda: rec.of("ready") == [inbox / "photo.png"])
    settle_grace()
    assert rec.of("ready") == [inbox / "photo.png"]
    assert rec.sizes[inbox / "photo.png"] == 50_000


def test_watcher_slow_writer_in_polling_mode_is_released_after_last_write(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """Chunks written over ~1.5 s with only weak hints are not released before the last one."""
    settings = WatchSettings(mode="polling", quiet_s=0.1, settle_s=0.6, poll_interval_s=0.1)
    _, rec = start_watcher(settings)
    target = inbox / "slow.png"
    with target.open("wb") as f:
        for _ in range(15):
            f.write(b"s" * 1000)
            f.flush()
            time.sleep(0.1)
    last_write = time.monotonic()
    assert wait_for(lambda: rec.of("ready") == [target])
    assert rec.sizes[target] == 15_000
    assert rec.times[target] >= last_write


def test_watcher_rename_into_place_releases_only_the_final_name(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """Writing x.part then renaming it to x.png releases x.png once and never x.part."""
    _, rec = start_watcher()
    part = inbox / "x.png.part"
    with part.open("wb") as f:
        for _ in range(3):
            f.write(b"x" * 1000)
            f.flush()
            time.sleep(0.05)
    part.rename(inbox / "x.png")
    assert wait_for(lambda: rec.of("ready") == [inbox / "x.png"])
    settle_grace()
    assert rec.of("ready") == [inbox / "x.png"]
    assert rec.of("moved") == []


def test_watcher_files_in_subfolders_created_after_start_are_released(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """A folder made after start is watched: a file written there later is released."""
    _, rec = start_watcher()
    sub = inbox / "new" / "deeper"
    sub.mkdir(parents=True)
    time.sleep(0.2)
    (sub / "late.jpg").write_bytes(b"j" * 100)
    assert wait_for(lambda: rec.of("ready") == [sub / "late.jpg"])


def test_watcher_folder_moved_in_with_files_releases_each(
    start_watcher: WatcherFactory, inbox: Path, outside: Path
) -> None:
    """A folder renamed into the inbox with files (and a subfolder) inside releases them all."""
    _, rec = start_watcher()
    album = outside / "album"
    (album / "sub").mkdir(parents=True)
    for name in ("a.png", "b.jpg", "sub/c.webp", "notes.txt"):
        (album / name).write_bytes(b"i" * 10)
    album.rename(inbox / "album")
    expected = {inbox / "album" / n for n in ("a.png", "b.jpg", "sub/c.webp")}
    assert wait_for(lambda: set(rec.of("ready")) == expected)
    settle_grace()
    assert sorted(rec.of("ready")) == sorted(expected)
    assert rec.of("moved") == []


def test_watcher_mkdir_then_copy_race_is_covered(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """`mkdir -p a/b && cp x a/b/`: the file lands before the new folders are watched."""
    _, rec = start_watcher()
    target = inbox / "a" / "b" / "x.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"r" * 100)
    assert wait_for(lambda: rec.of("ready") == [target])
    settle_grace()
    assert rec.of("ready") == [target]


def test_watcher_ignored_names_are_never_released(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """Hidden, temporary, partial and NAS housekeeping names are never released."""
    _, rec = start_watcher()
    ignored = [
        ".hidden.png",
        "._mac.png",
        "~lock.png",
        ".syncthing.s.png.tmp",
        "download.png.crdownload",
        "x.png.tmp",
        "@eaDir/thumb.png",
        "#recycle/old.png",
        ".stversions/v.png",
        "notes.txt",
    ]
    for name in ignored:
        (inbox / name).parent.mkdir(exist_ok=True)
        (inbox / name).write_bytes(b"n")
    (inbox / "real.png").write_bytes(b"r")
    assert wait_for(lambda: rec.of("ready") == [inbox / "real.png"])
    settle_grace()
    assert rec.of("ready") == [inbox / "real.png"]


def test_watcher_rule_file_change_calls_on_rule_change(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """Writing and deleting a folder's .promptd.yaml reports that folder each time."""
    _, rec = start_watcher()
    folder = inbox / "portraits"
    folder.mkdir()
    rule = folder / ".promptd.yaml"
    rule.write_text("mode: clip\n")
    assert wait_for(lambda: rec.of("rules") == [folder])
    rule.unlink()
    assert wait_for(lambda: rec.of("rules") == [folder, folder])
    assert rec.of("ready") == []


def test_watcher_deleted_image_calls_on_removed(start_watcher: WatcherFactory, inbox: Path) -> None:
    """Deleting an image reports it, so its sidecars can go too."""
    _, rec = start_watcher()
    image = inbox / "gone.png"
    image.write_bytes(b"g")
    assert wait_for(lambda: rec.of("ready") == [image])
    image.unlink()
    assert wait_for(lambda: rec.of("removed") == [image])


def test_watcher_move_within_inbox_calls_on_moved_and_releases_dest(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """Renaming an image inside the inbox reports (src, dest) and releases dest."""
    _, rec = start_watcher()
    (inbox / "b").mkdir()
    src = inbox / "a.png"
    src.write_bytes(b"m")
    assert wait_for(lambda: rec.of("ready") == [src])
    dest = inbox / "b" / "renamed.png"
    src.rename(dest)
    assert wait_for(lambda: rec.of("moved") == [(src, dest)]), rec.calls
    assert wait_for(lambda: rec.of("ready") == [src, dest])
    assert rec.of("removed") == []


def test_watcher_folder_moved_within_reports_it_and_releases_contents(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """Renaming a folder reports (src, dest) once, and its images and rules are re-checked."""
    _, rec = start_watcher()
    src = inbox / "2024"
    src.mkdir()
    (src / ".promptd.yaml").write_text("mode: clip\n")
    (src / "a.png").write_bytes(b"a")
    assert wait_for(lambda: rec.of("ready") == [src / "a.png"] and rec.of("rules") == [src])
    dest = inbox / "archive-2024"
    src.rename(dest)
    assert wait_for(lambda: rec.of("moved") == [(src, dest)])
    assert wait_for(lambda: rec.of("ready") == [src / "a.png", dest / "a.png"])
    assert wait_for(lambda: set(rec.of("rules")) == {src, dest})
    assert rec.of("removed") == []


def test_watcher_hint_releases_a_path_found_elsewhere(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """A path handed in by a rescan (no event for it) is released once settled; paths
    outside the inbox are refused."""
    image = inbox / "found.png"
    image.write_bytes(b"f")
    stray = inbox.parent / "stray.png"
    stray.write_bytes(b"s")
    watcher, rec = start_watcher()
    settle_grace()
    assert rec.of("ready") == []
    watcher.hint(stray)
    watcher.hint(image)
    assert wait_for(lambda: rec.of("ready") == [image])
    settle_grace()
    assert rec.of("ready") == [image]


def test_watcher_observer_stopped_behind_its_back_is_restarted_with_rescan(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """A dead observer is replaced, a rescan is requested, and new files are seen again."""
    watcher, rec = start_watcher()
    (old,) = watcher.observers()
    old.stop()
    old.join(2)
    assert wait_for(lambda: any("observer restarted" in r for r in rec.of("rescan")))
    assert wait_for(watcher.healthy)
    assert watcher.observers()[0] is not old
    (inbox / "after.png").write_bytes(b"a")
    assert wait_for(lambda: rec.of("ready") == [inbox / "after.png"])


def test_watcher_polling_mode_releases_files(start_watcher: WatcherFactory, inbox: Path) -> None:
    """watch.mode: polling uses the polling observer and still releases files."""
    watcher, rec = start_watcher(WatchSettings(mode="polling", settle_s=0.3, poll_interval_s=0.1))
    assert watcher.modes() == {inbox: "polling"}
    (inbox / "polled.png").write_bytes(b"p" * 10)
    assert wait_for(lambda: rec.of("ready") == [inbox / "polled.png"])


def test_watcher_auto_mode_polls_a_network_mount(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """auto picks polling when the inbox lives on NFS."""
    mounts = f"/dev/vda / ext4 rw 0 0\nnas:/photos {inbox.resolve()} nfs4 rw 0 0\n"
    watcher, _ = start_watcher(mounts_text=mounts)
    assert watcher.modes() == {inbox: "polling"}


def test_watcher_out_of_inotify_watches_falls_back_to_polling(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """ENOSPC when inotify starts makes that root polled instead, and files still arrive."""

    def no_inotify(kind: ObserverKind, poll_interval_s: float) -> BaseObserver:
        if kind == "inotify":
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return make_observer(kind, poll_interval_s)

    watcher, rec = start_watcher(observer_factory=no_inotify)
    assert watcher.modes() == {inbox: "polling"}
    (inbox / "fallback.png").write_bytes(b"f")
    assert wait_for(lambda: rec.of("ready") == [inbox / "fallback.png"])


def test_watcher_inotify_overflow_requests_a_rescan(start_watcher: WatcherFactory) -> None:
    """watchdog's queue-overflow warning (events lost) turns into needs_rescan."""
    _, rec = start_watcher()
    logging.getLogger(OVERFLOW_LOGGER).warning(
        "Inotify queue overflowed; filesystem events were lost"
    )
    assert wait_for(lambda: any("overflow" in r for r in rec.of("rescan")))


def test_watcher_failing_callback_does_not_stop_the_watcher(
    start_watcher: WatcherFactory, inbox: Path
) -> None:
    """An exception in on_ready is logged; later files are still released."""
    seen: list[Path] = []

    def flaky(path: Path) -> None:
        seen.append(path)
        if len(seen) == 1:
            raise RuntimeError("boom")

    watcher, _ = start_watcher(on_ready=flaky)
    (inbox / "first.png").write_bytes(b"1")
    assert wait_for(lambda: len(seen) == 1)
    (inbox / "second.png").write_bytes(b"2")
    assert wait_for(lambda: inbox / "second.png" in seen)
    assert watcher.healthy()


def test_watcher_healthy_until_stopped(start_watcher: WatcherFactory) -> None:
    """healthy() is True while running and False after stop()."""
    watcher, _ = start_watcher()
    assert watcher.healthy()
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 3.0
    assert not watcher.healthy()


def test_watcher_missing_root_raises_config_error(tmp_path: Path) -> None:
    """A root that does not exist is a clear error naming the folder."""
    rec = Recorder()
    watcher = Watcher(
        [tmp_path / "missing"],
        FAST,
        is_candidate=is_candidate,
        on_ready=rec.ready,
        on_rule_change=rec.add,
        on_removed=rec.add,
        on_moved=rec.add,
        needs_rescan=rec.add,
    )
    with pytest.raises(ConfigError, match="cannot watch") as info:
        watcher.start()
    assert info.value.path == tmp_path / "missing"


# --- scan and folder count ---------------------------------------------------------------------


def test_scan_finds_nested_candidates_and_skips_hidden_folders(inbox: Path) -> None:
    """The walk yields images at any depth, prunes hidden folders and follows no symlinks."""
    for name in ("a.png", "x/b.jpg", "x/y/z/c.webp", ".hidden/d.png", "@eaDir/e.png", "x/f.txt"):
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_bytes(b"s")
    (inbox / "link.png").symlink_to(inbox / "a.png")
    (inbox / "linked-folder").symlink_to(inbox / "x")
    found = set(scan(inbox, is_candidate=is_candidate))
    assert found == {inbox / "a.png", inbox / "x/b.jpg", inbox / "x/y/z/c.webp"}


def test_scan_reports_rule_files_only_when_asked(inbox: Path) -> None:
    """Rule files are hidden but found with rule_files=True."""
    (inbox / "sub").mkdir()
    (inbox / "sub" / ".promptd.yaml").write_text("mode: clip\n")
    assert list(scan(inbox, is_candidate=is_candidate)) == []
    assert list(scan(inbox, is_candidate=is_candidate, rule_files=True)) == [
        inbox / "sub" / ".promptd.yaml"
    ]


def test_scan_extra_ignore_patterns_prune_folders(inbox: Path) -> None:
    """Config ignore globs apply to folder names too."""
    (inbox / "raw").mkdir()
    (inbox / "raw" / "a.png").write_bytes(b"r")
    (inbox / "b.png").write_bytes(b"b")
    assert list(scan(inbox, is_candidate=is_candidate, ignore=("raw",))) == [inbox / "b.png"]


def test_count_folders_counts_every_real_folder(inbox: Path) -> None:
    """The inotify watch count includes hidden folders (watchdog watches them) but not links."""
    for name in ("a/b", "c", ".hidden"):
        (inbox / name).mkdir(parents=True)
    (inbox / "link").symlink_to(inbox / "a")
    assert count_folders(inbox) == 5


# --- the event mapping (pure) ------------------------------------------------------------------

ROOT = Path("/inbox")


def wanted(path: Path, is_dir: bool) -> bool:
    hidden = any(p.startswith(".") and p != ".promptd.yaml" for p in path.parts[2:])
    ok = path.is_relative_to(ROOT) and not hidden
    return ok and (is_dir or is_candidate(path) or path.name == ".promptd.yaml")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (FileCreatedEvent("/inbox/a.png"), [Action("hint", ROOT / "a.png")]),
        (FileClosedEvent("/inbox/a.png"), [Action("hint", ROOT / "a.png", strong=True)]),
        (FileCreatedEvent("/inbox/a.png", is_synthetic=True), []),
        (FileCreatedEvent("/inbox/.a.png"), []),
        (
            FileMovedEvent("/inbox/a.png.part", "/inbox/a.png"),
            [Action("forget", ROOT / "a.png.part"), Action("hint", ROOT / "a.png", strong=True)],
        ),
        (FileMovedEvent("", "/inbox/a.png"), [Action("hint", ROOT / "a.png", strong=True)]),
        (
            FileMovedEvent("/inbox/a.png", "/inbox/b.png"),
            [
                Action("forget", ROOT / "a.png"),
                Action("moved", ROOT / "a.png", ROOT / "b.png"),
                Action("hint", ROOT / "b.png", strong=True),
            ],
        ),
        (
            FileMovedEvent("/inbox/a.png", ""),
            [Action("forget", ROOT / "a.png"), Action("removed", ROOT / "a.png")],
        ),
        (
            FileMovedEvent("/inbox/a.png", "/inbox/.trash/a.png"),
            [Action("forget", ROOT / "a.png"), Action("removed", ROOT / "a.png")],
        ),
        (
            FileDeletedEvent("/inbox/s/.promptd.yaml"),
            [Action("forget", ROOT / "s/.promptd.yaml"), Action("rules", ROOT / "s")],
        ),
        (DirCreatedEvent("/inbox/new"), [Action("walk", ROOT / "new")]),
        (DirMovedEvent("", "/inbox/album"), [Action("walk", ROOT / "album", strong=True)]),
        (
            DirMovedEvent("/inbox/a", "/inbox/b"),
            [
                Action("forget_under", ROOT / "a"),
                Action("moved", ROOT / "a", ROOT / "b"),
                Action("walk", ROOT / "b", ROOT / "a", strong=True),
            ],
        ),
        (
            DirMovedEvent("/inbox/a", ""),
            [Action("forget_under", ROOT / "a"), Action("rules", ROOT / "a")],
        ),
    ],
    ids=[
        "created-weak",
        "closed-strong",
        "synthetic-skipped",
        "hidden-skipped",
        "renamed-into-place",
        "moved-in",
        "moved-within",
        "moved-out",
        "moved-to-hidden",
        "rule-deleted",
        "folder-created",
        "folder-moved-in",
        "folder-moved-within",
        "folder-moved-out",
    ],
)
def test_actions_for_event_maps_to_expected_actions(event: Any, expected: list[Action]) -> None:
    """Each kind of event becomes the documented hints and callbacks."""
    assert actions_for(event, wanted) == expected


# --- filesystem facts (pure parts) -------------------------------------------------------------

MOUNTS = r"""/dev/vda / ext4 rw 0 0
server:/export /mnt/nas nfs4 rw 0 0
//host/share /mnt/nas/smb\040share cifs rw 0 0
user@h:/x /home/u/remote fuse.sshfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/home/u/photos", "ext4"),
        ("/mnt/nas/inbox", "nfs4"),
        ("/mnt/nas/smb share/in", "cifs"),
        ("/mnt/nas/smb", "nfs4"),
        ("/home/u/remote/in", "fuse.sshfs"),
    ],
)
def test_mount_fstype_picks_longest_unescaped_mount_point(path: str, fstype: str) -> None:
    """The deepest mount point containing the path wins; \\040 means a space."""
    assert fsinfo.mount_fstype(Path(path), MOUNTS) == fstype


@pytest.mark.parametrize(
    ("fstype", "network"),
    [
        *[("nfs4", True), ("cifs", True), ("fuse.sshfs", True), ("9p", True)],
        *[("ext4", False), ("btrfs", False), ("fuseblk", False), ("tmpfs", False)],
    ],
)
def test_is_network_fs_flags_remote_filesystems(fstype: str, network: bool) -> None:
    """Network and FUSE filesystems are polled; local ones are not."""
    assert fsinfo.is_network_fs(fstype) is network


def test_network_submounts_finds_shares_below_a_root() -> None:
    """A CIFS share mounted inside a local inbox is found, the root's own mount is not."""
    assert fsinfo.network_submounts(Path("/mnt/nas"), MOUNTS) == [Path("/mnt/nas/smb share")]
    assert fsinfo.network_submounts(Path("/srv"), MOUNTS) == []


def test_check_watch_limit_names_what_to_raise() -> None:
    """Too many folders for max_user_watches gives the sysctl command and the file to edit."""
    message = fsinfo.check_watch_limit(9000, 8192)
    assert message is not None
    assert "sudo sysctl fs.inotify.max_user_watches=524288" in message
    assert "/etc/sysctl.d/" in message
    assert "9000 folders" in message


def test_check_watch_limit_is_silent_when_it_fits_or_is_unknown() -> None:
    """Enough watches, or no limit to read (not Linux), gives no message."""
    assert fsinfo.check_watch_limit(100, 8192) is None
    assert fsinfo.check_watch_limit(100, 0) is None


def test_inotify_limits_reads_the_proc_files(tmp_path: Path) -> None:
    """The limits are read from /proc/sys/fs/inotify; unreadable ones are left out."""
    (tmp_path / "max_user_watches").write_text("8192\n")
    (tmp_path / "max_user_instances").write_text("128\n")
    (tmp_path / "max_queued_events").write_text("garbage\n")
    assert fsinfo.inotify_limits(tmp_path) == {"max_user_watches": 8192, "max_user_instances": 128}


def test_inotify_limits_on_this_machine_are_numbers() -> None:
    """On Linux the real limits are read."""
    if not fsinfo.INOTIFY_DIR.is_dir():
        pytest.skip("no inotify here")
    assert fsinfo.inotify_limits()["max_user_watches"] > 0
