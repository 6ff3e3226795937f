"""End to end with hostile input: a rule-file bomb, links, hostile answers, a hanging image.

The daemon and `promptd process` run as real subprocesses; their peak memory is read from
the child itself (VmHWM), so it is that process's and no one else's.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.clean import clean_text
from daemon.service.quarantine import IN_HAND_FILE
from daemon.service.state import read_state, state_path
from daemon.sidecar import validate_sidecar
from tests.daemon_helpers import (
    Daemon,
    NotifyListener,
    all_have_status,
    sidecar_doc,
    txt_path,
    wait_until,
    write_images,
)
from tests.fake_ollama import FakeOllama
from tests.test_daemon import daemon_config
from tests.test_hostile_yaml import laughs
from tests.test_process import write_config

pytestmark = pytest.mark.slow
MB = 1024 * 1024
PEAK = (
    "import sys, json\n"
    "from daemon.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
    "print(json.dumps({'code': code, 'peak_kb': int(hwm.split()[1])}), file=sys.stderr)\n"
)


def process_with_peak(config: Path, target: Path) -> tuple[int, int, str]:
    """`promptd process TARGET` in a child; (exit code, its peak RSS in bytes, stdout)."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK, "process", str(target), "--config", str(config),
         "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["peak_kb"] * 1024, done.stdout


def test_process_rule_bomb_holds_its_folder_and_does_the_rest_in_little_memory(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """The issue's bomb in one subfolder: its images held, the others done, peak RSS modest."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = tmp_path / "inbox"
    bombed = write_images(inbox / "shared", 2, prefix="bombed")
    (inbox / "shared" / ".promptd.yaml").write_text(laughs(9), encoding="utf-8")
    beside = write_images(inbox, 2, prefix="beside") + write_images(inbox / "other", 1)
    code, peak, out = process_with_peak(config, inbox)
    assert code == 1  # held images count as not done
    assert "2 held by invalid rules" in out
    assert all_have_status(beside, "ok")
    assert all(sidecar_doc(p) is None and not txt_path(p).exists() for p in bombed)
    assert peak < 700 * MB, f"peak RSS {peak / MB:.0f} MB"


def test_process_symlinks_are_named_and_not_followed(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """A linked image and a linked folder: told on stderr, never read, no sidecar."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = tmp_path / "inbox"
    outside = write_images(tmp_path / "outside", 1, prefix="secret")
    (inbox / "link.png").symlink_to(outside[0])
    (inbox / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "process", str(inbox), "--config", str(config),
         "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{inbox / 'link.png'}: a symbolic link, not followed" in done.stderr
    assert f"{inbox / 'linked'}: a symbolic link, not followed" in done.stderr
    assert sorted(p.name for p in inbox.iterdir()) == ["link.png", "linked"]
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret0000.png"]


@pytest.mark.parametrize("switch", ["hostile_text", "huge_answer_bytes", "ignore_schema"])
@pytest.mark.parametrize("mode", ["speed", "quality"])
def test_process_hostile_answers_leave_valid_records_and_one_clean_line(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama, switch: str, mode: str
) -> None:
    """Whatever the model sends, every record validates and every .txt is one clean line."""
    setattr(fake_ollama, switch, 200 * 1024 if switch == "huge_answer_bytes" else True)
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url, defaults={"mode": mode})
    images = write_images(tmp_path / "inbox", 2)
    code, _peak, _out = process_with_peak(config, tmp_path / "inbox")
    assert code == 0
    for image in images:
        doc = sidecar_doc(image)
        assert doc is not None and validate_sidecar(doc) == []
        data = txt_path(image).read_bytes()
        line = data.decode("utf-8").removesuffix("\n")
        assert line and clean_text(line) == line and data.count(b"\n") == 1
        assert doc["prompt"] == line
        expected = "ok" if switch == "hostile_text" else "degraded"
        assert doc["status"] == expected, doc.get("degraded_reason")


# --- the daemon ----------------------------------------------------------------------------


def vm_hwm(pid: int) -> int:
    """The peak RSS of a running process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_run_rule_bomb_dropped_into_a_subfolder_holds_it_and_the_service_keeps_going(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    """The bomb arrives while the service runs: its folder is held (status says why), images
    beside it are done, the service stays up and small; a linked image is counted."""
    with FakeOllama() as fake:
        config = daemon_config(tmp_path, tiny_clip_dir, fake.url)
        inbox = tmp_path / "inbox"
        daemon = Daemon(config, tmp_path / "daemon.log")
        try:
            daemon.wait_ready()
            shared = inbox / "shared"
            shared.mkdir()
            (shared / ".promptd.yaml").write_text(laughs(9), encoding="utf-8")
            held = write_images(shared, 2, prefix="held")
            beside = write_images(inbox, 2, prefix="beside")
            outside = write_images(tmp_path / "outside", 1, prefix="secret")
            (inbox / "link.png").symlink_to(outside[0])
            wait_until(lambda: all_have_status(beside, "ok"), 60, "the images beside the bomb")

            def held_and_linked() -> Any:
                state = read_state(state_path(tmp_path / "cache"))
                return (
                    state is not None
                    and any(h.path == str(shared) for h in state.held_folders)
                    and state.symlinks == 1
                )

            daemon.signal(signal.SIGHUP)  # a reload rescans: the link is found by a scan
            wait_until(held_and_linked, 60, "the held folder and the link in the status")
            state = read_state(state_path(tmp_path / "cache"))
            assert state is not None
            problem = next(h.problem for h in state.held_folders if h.path == str(shared))
            assert "more than 8 aliases" in problem and "line 2" in problem
            assert all(sidecar_doc(p) is None for p in held)
            assert daemon.alive() and vm_hwm(daemon.pid) < 700 * MB
            assert len(daemon.events("symlink_not_followed")) == 1
        finally:
            daemon.stop()


def watchdog_pings(notify: NotifyListener) -> int:
    """WATCHDOG=1 messages received so far."""
    return notify.kinds().count("WATCHDOG")


def run_until_stuck(config: Path, tmp: Path, attempt: int) -> None:
    """Start the daemon, wait until it says the worker is stuck and the pings stop, then kill
    it without warning (as systemd's watchdog does; SIGKILL rather than SIGABRT so no core
    file is left)."""
    (tmp / f"n{attempt}").mkdir()
    notify = NotifyListener(tmp / f"n{attempt}")
    daemon = Daemon(
        config, tmp / f"daemon{attempt}.log", notify=notify, env={"WATCHDOG_USEC": "1000000"}
    )
    try:
        daemon.wait_ready()
        wait_until(lambda: daemon.events("worker_stuck"), 90, "the worker to be stuck")
        stuck = daemon.events("worker_stuck")[0]
        assert "withholding the systemd watchdog ping" in stuck["action"]
        before = watchdog_pings(notify)
        time.sleep(2.5)  # five ping intervals: none may come while stuck
        assert watchdog_pings(notify) == before, "pinged while stuck"
        assert before >= 1  # it did ping while healthy
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(20)
    finally:
        daemon.stop()
        notify.close()


def test_run_image_that_hangs_twice_is_quarantined_until_it_changes(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    """A model that never answers (read timeout an hour) wedges the worker on one image: the
    watchdog ping stops; killed twice with it in hand, it gets a quarantine record at the next
    start and is not tried again, while an image that shared its batch is done; once the
    file changes it is tried again."""
    with FakeOllama() as fake:
        fake.delay_s = 3600.0  # chats hang; /api/show and the preload answer at once
        config = daemon_config(
            tmp_path,
            tiny_clip_dir,
            fake.url,
            watch={"stuck_after_s": 3},
            ollama={"retries": 0, "timeout": {"connect_s": 2, "read_s": 3600}},
        )
        inbox = tmp_path / "inbox"
        (hang,) = write_images(inbox / "a-slow", 1, prefix="hang")
        (fine,) = write_images(inbox / "b-fast", 1, prefix="fine")
        (inbox / "b-fast" / ".promptd.yaml").write_text("mode: clip\n", encoding="utf-8")
        in_hand = tmp_path / "cache" / IN_HAND_FILE

        run_until_stuck(config, tmp_path, 1)
        assert str(hang) in in_hand.read_text()
        run_until_stuck(config, tmp_path, 2)
        assert str(hang) in in_hand.read_text()

        daemon = Daemon(config, tmp_path / "daemon3.log")
        try:
            daemon.wait_ready()
            assert daemon.events("image_quarantined")[0]["path"] == str(hang)
            wait_until(lambda: all_have_status([fine], "ok"), 60, "the batch-mate to be done")
            doc = sidecar_doc(hang)
            assert doc is not None and validate_sidecar(doc) == []
            assert doc["status"] == "error" and doc["error"]["kind"] == "quarantined"
            assert "crashed or hung 2 times in a row" in doc["error"]["message"]
            assert not txt_path(hang).exists()
            assert sidecar_doc(fine)["status"] == "ok"  # type: ignore[index]

            fake.delay_s = 0.0
            hang.write_bytes(hang.read_bytes() + b"changed")
            wait_until(lambda: all_have_status([hang], "ok"), 60, "the changed file to be done")
        finally:
            daemon.stop()
