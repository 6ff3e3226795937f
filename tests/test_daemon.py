"""End to end: `promptd run` as a real subprocess on a temporary inbox.

The tiny CLIP and the fake Ollama server stand in for the models; the daemon's JSON log
(one "image" line per result) and its sd_notify messages (on a test socket) are what the
tests read, besides the sidecars on disk. Most intake checks share one daemon (`intake`),
each in its own folder; the signal and fault checks start their own.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.service.state import read_state, state_path
from daemon.sidecar import validate_sidecar
from tests.daemon_helpers import (
    Daemon,
    NotifyListener,
    all_have_status,
    count_done,
    json_path,
    png_bytes,
    sidecar_doc,
    statuses,
    temp_files,
    txt_path,
    wait_until,
    write_images,
)
from tests.fake_ollama import FakeOllama
from tests.test_process import write_config

pytestmark = pytest.mark.slow

# settle_s is 1.0 rather than 0.5 so a writer that pauses 0.2 s between chunks on a busy
# machine is still far from looking complete. The shared intake daemon rescans every 2 s, so
# rescans race with events there; elsewhere they would only slow a busy machine down.
FAST_WATCH = {
    "settle_s": 1.0,
    "quiet_s": 0.1,
    "recheck_s": 0.5,
    "rescan_interval_s": 300,
    "stop_timeout_s": 10,
}
DONE_S = 60  # deadline for images to get their sidecars (generous: the machine is shared)


def daemon_config(tmp: Path, clip_dir: Path, ollama_url: str, **overrides: Any) -> Path:
    """config.yaml for a daemon test: info-level JSON log, fast watch timings, the HTTP API on
    a free port (so daemons never fight over 8765)."""
    watch = {**FAST_WATCH, **overrides.pop("watch", {})}
    api = {"listen": "127.0.0.1:0", **overrides.pop("api", {})}
    return write_config(
        tmp, clip_dir, ollama_url, log={"level": "info"}, watch=watch, api=api, **overrides
    )


def chats(fake: FakeOllama) -> int:
    """Model requests the fake server has received (preloads, which have no messages, excluded)."""
    return sum(1 for body in fake.bodies("/api/chat") if body.get("messages"))


def promptd_status(config: Path) -> subprocess.CompletedProcess[str]:
    """Run `promptd status --config F` and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_result_each(daemon: Daemon, images: list[Path], status: str = "ok") -> None:
    """Every image has a valid sidecar with ``status`` and exactly one result line in the log."""
    counts = daemon.results_per_path()
    twice = {str(p): counts[str(p)] for p in images if counts[str(p)] != 1}
    assert not twice, f"images without exactly one result: {twice}"
    for image in images:
        doc = sidecar_doc(image)
        assert doc is not None and doc["status"] == status, (image, doc and doc.get("status"))
        assert validate_sidecar(doc) == [], image


# --- one daemon shared by the intake checks ---------------------------------------------------


@dataclass
class Intake:
    """The shared daemon and what surrounds it."""

    tmp: Path
    inbox: Path
    config: Path
    daemon: Daemon
    fake: FakeOllama
    notify: NotifyListener

    def outside(self, name: str) -> Path:
        """A fresh folder outside the inbox, on the same filesystem."""
        folder = self.tmp / "outside" / name
        folder.mkdir(parents=True)
        return folder

    def wait_done(self, images: list[Path], status: str = "ok") -> None:
        """Wait until every image has a sidecar with ``status`` and its result line is logged.

        The sidecars of a batch are written before its result lines, so waiting on the files
        alone races the log."""
        wait_until(
            lambda: (all_have_status(images, status) and self._all_logged(images)) or self._alive(),
            DONE_S,
            f"{len(images)} images to be {status}",
        )

    def _all_logged(self, images: list[Path]) -> bool:
        counts = self.daemon.results_per_path()
        return all(counts[str(p)] for p in images)

    def _alive(self) -> bool:
        assert self.daemon.alive(), self.daemon.tail()
        return False


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> Iterator[Intake]:
    """One `promptd run` with a watchdog and a notify socket, ready, on an empty inbox."""
    tmp = tmp_path_factory.mktemp("intake")
    with FakeOllama() as fake:
        config = daemon_config(tmp, tiny_clip_dir, fake.url, watch={"rescan_interval_s": 2})
        notify = NotifyListener(tmp)
        daemon = Daemon(config, tmp / "daemon.log", notify=notify, env={"WATCHDOG_USEC": "1000000"})
        try:
            daemon.wait_ready()
            yield Intake(tmp, tmp / "inbox", config, daemon, fake, notify)
        finally:
            daemon.stop()
            notify.close()


def test_run_with_notify_socket_sends_ready_then_status_and_watchdog(intake: Intake) -> None:
    """READY=1 comes once, before any queue STATUS= line and any WATCHDOG=1 ping."""
    wait_until(lambda: intake.notify.kinds().count("WATCHDOG") >= 2, 20, "two WATCHDOG=1 pings")
    keys = intake.notify.kinds()
    assert keys.count("READY") == 1
    ready = keys.index("READY")
    assert "WATCHDOG" not in keys[:ready]
    after = intake.notify.messages[ready + 1 :]
    assert any(m.get("STATUS", "").startswith("queue ") for m in after)
    assert not any(m.get("STATUS", "").startswith("queue ") for m in intake.notify.messages[:ready])
    assert "STOPPING" not in keys


def test_run_copied_images_each_get_exactly_one_result(intake: Intake) -> None:
    """Files copied into the inbox get one ok sidecar each."""
    source = write_images(intake.outside("copy"), 4, prefix="copy")
    images = [Path(shutil.copy(path, intake.inbox)) for path in source]
    intake.wait_done(images)
    assert_one_result_each(intake.daemon, images)


def test_run_slowly_written_image_is_read_only_once_complete(intake: Intake) -> None:
    """An image written in chunks over ~2 s is analysed once, as the complete file."""
    data = png_bytes(7, size=(160, 120))
    image = intake.inbox / "slow.png"
    chunks = 10
    step = -(-len(data) // chunks)
    with image.open("wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start : start + step])
            handle.flush()
            time.sleep(0.2)
    intake.wait_done([image])
    doc = sidecar_doc(image)
    assert doc is not None
    assert doc["image"]["bytes"] == len(data)
    assert doc["image"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert_one_result_each(intake.daemon, [image])


def test_run_part_file_renamed_into_place_is_handled_under_its_final_name(intake: Intake) -> None:
    """x.png.part is ignored while written; renamed to x.png it gets sidecars, the .part none."""
    part = intake.inbox / "renamed.png.part"
    part.write_bytes(png_bytes(11))
    time.sleep(0.3)  # the .part is closed and would be released now, were it not ignored
    image = part.with_name("renamed.png")
    part.rename(image)
    intake.wait_done([image])
    assert_one_result_each(intake.daemon, [image])
    assert str(part) not in intake.daemon.results_per_path()
    assert not list(intake.inbox.glob("renamed.png.part*.json"))


def test_run_subfolder_created_after_start_is_watched(intake: Intake) -> None:
    """Images dropped into a folder made after start (two levels deep) get sidecars."""
    folder = intake.inbox / "later" / "deeper"
    folder.mkdir(parents=True)
    time.sleep(0.2)  # let the new folder's watch be added, so this covers events inside it
    images = write_images(folder, 3, prefix="later")
    intake.wait_done(images)
    assert_one_result_each(intake.daemon, images)


def test_run_folder_moved_in_with_files_gets_every_image_done(intake: Intake) -> None:
    """A folder renamed into the inbox from outside brings its images (nested too) to the queue."""
    album = intake.outside("album")
    images = write_images(album, 3, prefix="moved") + write_images(album / "inner", 2, prefix="in")
    dest = intake.inbox / "album"
    album.rename(dest)
    moved = [dest / p.relative_to(album) for p in images]
    intake.wait_done(moved)
    assert_one_result_each(intake.daemon, moved)


def test_run_mkdir_p_then_copy_race_misses_nothing(intake: Intake) -> None:
    """`mkdir -p a/b && cp x a/b/`: files landing before the new folders' watches are found."""
    source = write_images(intake.outside("race"), 5, prefix="race")
    target = intake.inbox / "race"
    subprocess.run(
        [
            "sh",
            "-c",
            'mkdir -p "$1/a/b" && cp "$2"/*.png "$1/a/b/"',
            "sh",
            target,
            source[0].parent,
        ],
        check=True,
    )
    images = [target / "a" / "b" / p.name for p in source]
    intake.wait_done(images)
    assert_one_result_each(intake.daemon, images)


def test_run_burst_of_250_images_gives_each_exactly_one_result(intake: Intake) -> None:
    """250 images copied in at once: one sidecar, one log line and one model request each."""
    source = write_images(intake.outside("burst"), 250, prefix="burst")
    asked = chats(intake.fake)
    folder = intake.inbox / "burst"
    folder.mkdir()
    images = [Path(shutil.copy(path, folder)) for path in source]
    intake.wait_done(images)
    assert_one_result_each(intake.daemon, images)
    assert chats(intake.fake) - asked == len(images)


def test_run_moved_image_takes_its_sidecars_along(intake: Intake) -> None:
    """Renaming an image within the inbox moves its .txt and .json; it is not analysed again."""
    folder = intake.inbox / "moves"
    (folder / "sub").mkdir(parents=True)
    (image,) = write_images(folder, 1, prefix="before")
    intake.wait_done([image])
    old_txt, old_json = txt_path(image), json_path(image)
    caption = old_txt.read_text("utf-8")
    dest = folder / "sub" / "after.png"
    image.rename(dest)
    wait_until(
        lambda: json_path(dest).exists() and not old_json.exists(), 20, "the sidecars to move"
    )
    assert not old_txt.exists()
    assert txt_path(dest).read_text("utf-8") == caption
    doc = sidecar_doc(dest)
    assert doc is not None and doc["image"]["file"] == "after.png"
    assert validate_sidecar(doc) == []
    time.sleep(0.5)  # the move also hints the new path; it must be found up to date
    assert str(dest) not in intake.daemon.results_per_path()


def test_run_deleted_image_loses_its_sidecars_but_an_edited_caption_stays(intake: Intake) -> None:
    """Deleting an image removes its .json and .txt; a .txt the user edited is kept."""
    folder = intake.inbox / "deletes"
    plain, edited = write_images(folder, 2, prefix="gone")
    intake.wait_done([plain, edited])
    sidecars = [txt_path(plain), json_path(plain), json_path(edited)]
    edited_txt = txt_path(edited)
    edited_txt.write_text("my own words\n", encoding="utf-8")
    plain.unlink()
    edited.unlink()
    wait_until(lambda: not any(p.exists() for p in sidecars), 20, "the sidecars to be removed")
    assert edited_txt.read_text("utf-8") == "my own words\n"


def test_run_broken_rule_file_holds_its_folder_until_fixed(intake: Intake) -> None:
    """Images under an invalid .promptd.yaml wait, listed by `promptd status`; fixing it releases them."""
    held = intake.inbox / "held"
    held.mkdir()
    rule = held / ".promptd.yaml"
    rule.write_text("mode: turbo\n", encoding="utf-8")
    images = write_images(held, 2, prefix="held")
    free = write_images(intake.inbox / "free", 1, prefix="free")
    intake.wait_done(free)
    state_file = state_path(intake.tmp / "cache")

    def held_listed() -> bool:
        state = read_state(state_file)
        return state is not None and any(h.path == str(held) for h in state.held_folders)

    wait_until(held_listed, 20, "the status file to list the held folder")
    assert statuses(images) == dict.fromkeys(images)
    shown = promptd_status(intake.config)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert str(held) in shown.stdout and "turbo" in shown.stdout

    rule.write_text("mode: clip\n", encoding="utf-8")
    intake.wait_done(images)
    assert all(sidecar_doc(p)["mode"] == "clip" for p in images)  # type: ignore[index]
    wait_until(lambda: not held_listed(), 20, "the held folder to be released")


def test_status_while_running_shows_the_service_its_queue_and_counts(intake: Intake) -> None:
    """`promptd status` names the running pid and shows the queue and done counts."""
    images = write_images(intake.inbox / "status", 2, prefix="status")
    intake.wait_done(images)

    def shown() -> str:
        state = read_state(state_path(intake.tmp / "cache"))
        return "done" if state is not None and state.done >= 2 else ""

    wait_until(shown, 20, "the status file to count the done images")
    result = promptd_status(intake.config)
    assert result.returncode == 0, result.stderr
    assert f"promptd is running (pid {intake.daemon.pid})" in result.stdout
    assert "queue:" in result.stdout
    done = next(line for line in result.stdout.splitlines() if "done:" in line)
    assert int(done.split("done:")[1].split()[0]) >= 2


# --- crashes and signals -----------------------------------------------------------------------


def test_run_killed_mid_burst_then_restarted_leaves_every_image_valid(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """kill -9 partway through 150 images, restart: all get valid sidecars, no temp file stays."""
    fake_ollama.delay_s = 0.02
    config = daemon_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = tmp_path / "inbox"
    first = Daemon(config, tmp_path / "first.log")
    try:
        first.wait_ready()
        images = write_images(inbox / "burst", 150)
        wait_until(lambda: count_done(images) >= 20, DONE_S, "20 images to be done", interval=0.1)
        first.proc.kill()
        first.wait_exit(10)
    finally:
        first.stop()
    done_before = count_done(images)
    assert done_before < len(images), "the burst finished before the kill: make it slower"

    second = Daemon(config, tmp_path / "second.log")
    try:
        second.wait_ready()
        wait_until(
            lambda: all_have_status(images, "ok"), DONE_S, "every image to be ok", interval=0.2
        )
    finally:
        second.stop()
    for image in images:
        doc = sidecar_doc(image)
        assert doc is not None and validate_sidecar(doc) == [], image
        assert txt_path(image).read_text("utf-8").strip() == doc["prompt"]
    assert temp_files(tmp_path) == []
    leftovers = [
        p for p in inbox.rglob("*") if p.is_file() and p.suffix not in {".png", ".txt", ".json"}
    ]
    assert leftovers == []


def test_run_sigterm_mid_burst_exits_0_in_bounded_time_without_temp_files(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """SIGTERM during a burst: STOPPING=1 last, exit 0 within 15 s, whole sidecars only."""
    fake_ollama.delay_s = 0.02
    config = daemon_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    notify = NotifyListener(tmp_path)
    daemon = Daemon(config, tmp_path / "daemon.log", notify=notify)
    try:
        daemon.wait_ready()
        images = write_images(tmp_path / "inbox", 150)
        wait_until(lambda: count_done(images) >= 10, DONE_S, "10 images to be done", interval=0.1)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(15) == 0, daemon.tail()
        assert time.monotonic() - started < 15
        wait_until(lambda: "STOPPING" in notify.kinds(), 5, "STOPPING=1")
    finally:
        daemon.stop()
        notify.close()
    keys = notify.kinds()
    assert keys.index("READY") < keys.index("STOPPING") == len(keys) - 1
    assert daemon.events("stopped")
    done = [p for p, status in statuses(images).items() if status is not None]
    assert 0 < len(done) < len(images)
    for image in done:
        assert validate_sidecar(sidecar_doc(image)) == []
    assert temp_files(tmp_path) == []
    shown = promptd_status(config)
    assert shown.returncode == 1
    assert "not running" in shown.stdout


def test_run_second_sigterm_exits_at_once(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """While the image in hand waits on a slow model, a second SIGTERM ends the process at once."""
    config = daemon_config(tmp_path, tiny_clip_dir, fake_ollama.url, watch={"stop_timeout_s": 60})
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        fake_ollama.delay_s = 30.0
        write_images(tmp_path / "inbox", 2)
        wait_until(lambda: chats(fake_ollama), 30, "a model request")
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: daemon.events("stopping"), 10, "the first SIGTERM to be handled")
        assert daemon.alive(), "the first SIGTERM did not wait for the image in hand"
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait_exit(5)
        assert time.monotonic() - started < 3
        assert code != 0
    finally:
        fake_ollama.delay_s = 0.0
        daemon.stop()


# --- faults and reloads ------------------------------------------------------------------------


def test_run_ollama_down_at_start_then_up_upgrades_degraded_results(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """With Ollama down, images get degraded sidecars; once it is up they become ok, same process."""
    fake_ollama.down()
    config = daemon_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        images = write_images(tmp_path / "inbox", 3)
        wait_until(lambda: all_have_status(images, "degraded"), DONE_S, "degraded sidecars")
        fake_ollama.up()
        wait_until(lambda: all_have_status(images, "ok"), DONE_S, "the results to be upgraded")
        assert daemon.alive()
        assert daemon.events("ollama_back")
    finally:
        daemon.stop()
    for image in images:
        doc = sidecar_doc(image)
        assert doc is not None and doc["mode"] == "speed" and validate_sidecar(doc) == []


def test_run_sighup_rejects_an_invalid_config_and_applies_a_valid_one(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """SIGHUP with a broken config.yaml logs reload_rejected and keeps working; a valid one applies."""
    config = daemon_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = tmp_path / "inbox"
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        (first,) = write_images(inbox, 1, prefix="first")
        wait_until(lambda: all_have_status([first], "ok"), DONE_S, "the first image")

        daemon_config(tmp_path, tiny_clip_dir, fake_ollama.url, watch={"settle_s": -1})
        daemon.signal(signal.SIGHUP)
        rejected = wait_until(lambda: daemon.events("reload_rejected"), 20, "reload_rejected")
        assert any("settle_s" in problem for problem in rejected[0]["problems"])
        (second,) = write_images(inbox, 1, prefix="second")
        wait_until(lambda: all_have_status([second], "ok"), DONE_S, "an image after the rejection")
        assert daemon.alive()

        daemon_config(tmp_path, tiny_clip_dir, fake_ollama.url, defaults={"mode": "clip"})
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: daemon.events("config_reloaded"), 20, "config_reloaded")
        wait_until(
            lambda: all(sidecar_doc(p)["mode"] == "clip" for p in (first, second)),  # type: ignore[index]
            DONE_S,
            "the images to be redone in the new mode",
        )
    finally:
        daemon.stop()
