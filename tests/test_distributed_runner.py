"""The Redis keys beside Celery's and one image on a worker, in-process, on a real redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

pytest.importorskip("celery", reason="the distributed extra is not installed")

from redis import Redis

from daemon.config.settings import Config
from daemon.distributed.coord import Coordinator, Heartbeat
from daemon.distributed.keys import ImageKey
from daemon.distributed.runner import Runner
from daemon.sidecar import validate_sidecar
from tests.daemon_helpers import png_bytes, sidecar_doc, txt_path
from tests.fake_ollama import FakeOllama
from tests.redis_server import RedisServer

KEY = ImageKey("inbox", "a/x.png", 1, 1)


@pytest.fixture
def coord(redis_server: RedisServer) -> Iterator[Coordinator]:
    """A Coordinator on the test's redis-server."""
    client = Redis.from_url(redis_server.url)
    yield Coordinator(client, "promptd-test", queued_ttl_s=600)
    client.close()


@pytest.fixture
def runner(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama, redis_server: RedisServer
) -> Runner:
    """A worker's Runner over tmp_path/inbox with the tiny CLIP and the fake Ollama."""
    config = Config.model_validate(
        {
            "inbox": [str(tmp_path / "inbox")],
            "cache_dir": str(tmp_path / "cache"),
            "clip": {"model": str(tiny_clip_dir), "device": "cpu", "offline": True},
            "ollama": {"host": fake_ollama.url, "retries": 0},
            "distributed": {
                "broker": redis_server.url,
                "queue": "promptd-test",
                "lock_timeout_s": 3,
                "file_wait_s": 0.5,
            },
        }
    )
    return Runner(config, "test-worker")


def marked_image(inbox: Path, name: str) -> tuple[Path, dict[str, Any]]:
    """An image in its own folder whose rule marks the LLM requests made for it."""
    folder = inbox / name
    folder.mkdir(parents=True)
    (folder / ".promptd.yaml").write_text(f'hint: "promptd-test-image:{name}"\n')
    image = folder / f"{name}.png"
    image.write_bytes(png_bytes(3))
    st = image.stat()
    return image, ImageKey("inbox", f"{name}/{name}.png", st.st_size, st.st_mtime_ns).to_message()


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry.get("event") == name]


# --- the keys ------------------------------------------------------------------------------------


def test_mark_queued_twice_refuses_the_second_until_finished(coord: Coordinator) -> None:
    """A queued image is not sent again; once its work ends it can be."""
    assert coord.mark_queued(KEY) is True
    assert coord.mark_queued(KEY) is False
    assert coord.finish(KEY) is False
    assert coord.mark_queued(KEY) is True


def test_image_changed_while_in_hand_is_sent_once_more(coord: Coordinator) -> None:
    """A change seen while a worker holds the image asks for one more pass, keeping the mark."""
    coord.mark_queued(KEY)
    coord.note_changed(KEY)  # not in hand: nothing to remember
    assert coord.finish(KEY) is False

    coord.mark_queued(KEY)
    lock = coord.lock(KEY, 5)
    assert lock.acquire(blocking=False)
    coord.note_changed(KEY)
    lock.release()

    assert coord.finish(KEY) is True
    assert coord.mark_queued(KEY) is False  # still marked: the resend is on its way


def test_crash_count_grows_per_start_and_clears_on_a_clean_end(coord: Coordinator) -> None:
    """Starts without an end count as crashes; an end forgets them."""
    coord.started(KEY)
    coord.started(KEY)
    assert coord.crashes(KEY) == 2
    coord.ended(KEY)
    assert coord.crashes(KEY) == 0


def test_heartbeat_keeps_the_lock_past_its_timeout(coord: Coordinator) -> None:
    """While the heartbeat runs, nobody else gets the lock, even after its timeout."""
    lock = coord.lock(KEY, 2)
    assert lock.acquire(blocking=False)
    with Heartbeat(coord, KEY, lock, 2) as beat:
        time.sleep(3)
        assert beat.owned()
        assert coord.lock(KEY, 2).acquire(blocking=False) is False
    lock.release()


def test_lock_without_heartbeat_lapses_and_is_not_owned(coord: Coordinator) -> None:
    """A holder that stops extending (a dead worker) loses the lock to the next one."""
    lock = coord.lock(KEY, 2)
    assert lock.acquire(blocking=False)
    beat = Heartbeat(coord, KEY, lock, 2)  # never started

    time.sleep(2.5)

    assert beat.owned() is False
    assert coord.lock(KEY, 2).acquire(blocking=False) is True


def test_release_for_frees_only_the_named_holders_lock(coord: Coordinator) -> None:
    """The worker's parent can free its dead child's lock by token, and no one else's."""
    lock = coord.lock(KEY, 60)
    assert lock.acquire(blocking=False, token="host|123|task")

    assert coord.release_for(KEY, "host|999|task") is False
    assert coord.release_for(KEY, "host|123|task") is True
    assert coord.lock(KEY, 60).acquire(blocking=False) is True


def test_recheck_comes_due_after_its_delay_and_only_once(coord: Coordinator) -> None:
    """A turned-away image is handed back to the producer once, when its time has come."""
    coord.recheck_later(KEY, 0.5)
    coord.client.zadd("promptd-test:recheck", {"not json": 0, '{"inbox": "../x"}': 0})

    assert coord.due_rechecks() == []  # the hostile members are dropped, KEY is not due
    time.sleep(0.7)
    assert coord.due_rechecks() == [KEY]
    assert coord.due_rechecks() == []


def test_worker_beats_are_listed_until_they_lapse(coord: Coordinator) -> None:
    """A worker's hash is listed while its heartbeat lives."""
    coord.beat("gpu1", {"name": "gpu1", "pid": 7}, ttl_s=1)
    coord.count("gpu1", "ok")

    assert coord.workers() == [{"name": "gpu1", "pid": "7", "ok": "1"}]
    time.sleep(1.5)
    assert coord.workers() == []


# --- one image on a worker --------------------------------------------------------------------


def test_runner_with_good_key_writes_the_sidecars_and_clears_its_marks(
    runner: Runner, tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    """The pipeline runs on the mapped path; marks and crash count are gone afterwards."""
    image, payload = marked_image(tmp_path / "inbox", "one")
    key = ImageKey(**payload)
    runner.coord.mark_queued(key)

    outcome = runner.handle(payload, task_id="t1", attempt=0, redelivered=False)

    assert outcome.result is not None and outcome.result.outcome == "ok"
    doc = sidecar_doc(image)
    assert doc is not None and validate_sidecar(doc) == []
    assert [c.marker for c in fake_ollama.calls] == ["one"]
    assert runner.coord.mark_queued(key) is True  # the mark was cleared
    assert runner.coord.crashes(key) == 0
    assert runner.coord.client.hget(runner.coord.worker_key("test-worker"), "ok") == b"1"


@pytest.mark.parametrize(
    "payload",
    [
        {"inbox": "inbox", "path": "../../etc/passwd.png", "size": 1, "mtime_ns": 1},
        {"inbox": "inbox", "path": "/etc/x.png", "size": 1, "mtime_ns": 1},
        {"inbox": "nope", "path": "x.png", "size": 1, "mtime_ns": 1},
        "x" * 100,
        None,
    ],
)
def test_runner_with_hostile_payload_refuses_it_and_touches_nothing(
    runner: Runner, fake_ollama: FakeOllama, payload: Any
) -> None:
    """A bad key is logged and dropped: no lock, no model call, no file."""
    with capture_logs() as logs:
        outcome = runner.handle(payload, task_id="t2", attempt=0, redelivered=False)

    assert outcome.result is None
    assert len(events(logs, "task_refused")) == 1
    assert fake_ollama.calls == []


def test_runner_with_lock_held_leaves_the_image_to_its_holder(
    runner: Runner, tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    """Another worker holds the image: acknowledged and dropped, nothing composed or written."""
    image, payload = marked_image(tmp_path / "inbox", "held")
    assert runner.coord.lock(ImageKey(**payload), 60).acquire(blocking=False, token="other")

    with capture_logs() as logs:
        outcome = runner.handle(payload, task_id="t3", attempt=0, redelivered=True)

    assert outcome.result is None
    assert events(logs, "image_locked")[0]["redelivered"] is True
    assert fake_ollama.calls == [] and sidecar_doc(image) is None
    assert runner.coord.client.zcard("promptd-test:recheck") == 1  # the producer looks again


def test_runner_with_file_missing_here_reports_it_and_clears_the_mark(
    runner: Runner, tmp_path: Path
) -> None:
    """After the short wait the task ends with one clear line; the next scan may resend it."""
    (tmp_path / "inbox").mkdir()
    payload = {"inbox": "inbox", "path": "gone/x.png", "size": 1, "mtime_ns": 1}
    runner.coord.mark_queued(ImageKey(**payload))

    with capture_logs() as logs:
        outcome = runner.handle(payload, task_id="t4", attempt=0, redelivered=False)

    (line,) = events(logs, "image_not_visible")
    assert "mounted" in line["reason"] and line["image"] == "inbox/gone/x.png"
    assert outcome.result is None and outcome.retry_in is None
    assert runner.coord.mark_queued(ImageKey(**payload)) is True


def test_runner_with_image_two_workers_died_on_quarantines_it(
    runner: Runner, tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    """A crash count of 2 on arrival: an error record saying why, no .txt, no model call."""
    image, payload = marked_image(tmp_path / "inbox", "poison")
    key = ImageKey(**payload)
    runner.coord.started(key)
    runner.coord.started(key)

    outcome = runner.handle(payload, task_id="t5", attempt=0, redelivered=True)

    assert outcome.result is not None and outcome.result.outcome == "error"
    doc = sidecar_doc(image)
    assert doc is not None and validate_sidecar(doc) == []
    assert doc["status"] == "error" and doc["error"]["kind"] == "quarantined"
    assert "worker processes died" in doc["error"]["message"]
    assert not txt_path(image).exists()
    assert fake_ollama.calls == []
    assert runner.coord.crashes(key) == 0


def test_runner_that_lost_its_lock_while_composing_writes_nothing(
    runner: Runner, tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    """The lock checked before the write: a worker that lost it leaves the files alone."""
    image, payload = marked_image(tmp_path / "inbox", "lost")
    lock_key = f"promptd-test:lock:{ImageKey(**payload).digest}"
    fake_ollama.on_call = lambda marker: runner.coord.client.delete(lock_key)  # type: ignore[func-returns-value]

    outcome = runner.handle(payload, task_id="t6", attempt=0, redelivered=False)

    assert outcome.result is not None and outcome.result.outcome == "skipped"
    assert "lock lost" in (outcome.result.reason or "")
    assert sidecar_doc(image) is None and not txt_path(image).exists()
