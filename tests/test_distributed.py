"""Several workers, one inbox: real redis-server, real `promptd run` and `promptd worker`
processes, the tiny CLIP and the fake Ollama, which logs which image each model call was for.

Timings are the test's own (``FAST`` in distributed_helpers: a 10 s visibility timeout, 5 s
locks, 1 s sweeps), so a crash is recovered within seconds, not the default hour.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery", reason="the distributed extra is not installed")

from redis import Redis

from daemon.config import ClipSettings
from tests.daemon_helpers import Daemon, sidecar_doc, txt_path, wait_until
from tests.distributed_helpers import (
    Cluster,
    all_done,
    leftovers,
    marked_images,
    marker,
    overlapping,
    wait_warm,
)
from tests.fake_ollama import FakeOllama
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def warm_cache(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP's label embeddings, computed once for every process of this module."""
    from daemon.pipeline.analyze.clip import ClipAnalyzer

    folder = tmp_path_factory.mktemp("clip-cache")
    settings = ClipSettings(model=str(tiny_clip_dir), device="cpu", offline=True)
    ClipAnalyzer(settings, folder).load()
    return folder


@pytest.fixture
def cluster(
    tmp_path: Path,
    tiny_clip_dir: Path,
    warm_cache: Path,
    fake_ollama: FakeOllama,
    redis_server: RedisServer,
) -> Iterator[Cluster]:
    """Configs on tmp_path/inbox; every process started through it is stopped after the test."""
    found = Cluster(tmp_path, tiny_clip_dir, warm_cache, fake_ollama, redis_server)
    try:
        yield found
    finally:
        found.stop()


def per_image(cluster: Cluster, images: list[Path]) -> Counter[str]:
    """How many model calls each image got."""
    return Counter(c.marker for c in cluster.fake.calls if c.marker in {marker(i) for i in images})


def worked_on(worker: Daemon) -> set[str]:
    """The images a worker wrote a result for (its "image" log lines)."""
    return {Path(line["path"]).stem for line in worker.events("image")}


def test_burst_with_two_workers_every_image_done_once_by_one_worker(cluster: Cluster) -> None:
    """200 images through a producer and two workers: one valid record each, one model call
    each, never two workers composing one image at the same time; `promptd status` shows it."""
    w1, w2 = cluster.worker("w1"), cluster.worker("w2")
    producer = cluster.producer()
    wait_warm(w1, w2)
    images = marked_images(cluster.inbox, 200)  # through the watcher

    wait_until(lambda: all_done(images), 240, "every image done")

    counts = per_image(cluster, images)
    assert set(counts.values()) == {1}, counts.most_common(3)
    assert overlapping(cluster.fake.calls) == []
    assert worked_on(w1) and worked_on(w2)  # both took part
    assert worked_on(w1) | worked_on(w2) == {marker(i) for i in images}
    assert leftovers(cluster.inbox) == []
    status = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "status", "--config", str(producer.config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert f"{cluster.redis.url}: reachable since" in status.stdout, status.stdout
    assert "2 seen recently" in status.stdout
    assert "w1 (pid" in status.stdout and "w2 (pid" in status.stdout


def test_worker_killed_mid_burst_its_image_is_redone_by_the_other(cluster: Cluster) -> None:
    """kill -9 of a whole worker (parent and child) with an image in hand: the other worker
    redoes that image after the visibility timeout (or, if Redis handed it out while the dead
    worker's lock still lived, after the producer's recheck); all done, nothing half-written."""
    cluster.fake.delay_s = 0.05  # each image is in hand for a while
    victim, survivor = cluster.worker("victim"), cluster.worker("survivor")
    images = marked_images(cluster.inbox, 60)
    cluster.producer()
    wait_warm(victim, survivor)
    client = Redis.from_url(cluster.redis.url)
    killed: dict[str, Any] = {}

    def kill_the_victim_as_it_composes(name: str | None) -> None:
        # Killed as its model call starts, so the image cannot be finished first (polling
        # `current` and then killing raced the victim's last write).
        current = (client.hget("promptd:worker:victim", "current") or b"").decode()
        if not killed and name is not None and current.endswith(f"{name}.png"):
            victim.kill_group()
            killed.update(name=name, at=time.monotonic())

    cluster.fake.on_call = kill_the_victim_as_it_composes
    wait_until(lambda: killed, 120, "the victim to compose an image", interval=0.01)
    name, killed_at = killed["name"], killed["at"]

    wait_until(lambda: all_done(images), 240, "every image done")
    assert name in worked_on(survivor), f"{name} was not redone by the survivor"
    redone = [c for c in cluster.fake.calls_for(name) if c.started > killed_at]
    # The visibility clock started when the victim reserved the message; the copy handed out
    # while its lock still lived is rechecked once the lock and mark lapse (2 x 5 s).
    assert redone and redone[0].started - killed_at < 10 + 10 + 5
    assert overlapping(cluster.fake.calls) == []
    assert leftovers(cluster.inbox) == []
    client.close()


def test_redis_restarted_empty_mid_burst_loses_nothing(cluster: Cluster) -> None:
    """Redis comes back with nothing (queue, marks, locks gone): the producer notices, rescans
    and sends what is still pending; every image ends done."""
    cluster.fake.delay_s = 0.05
    cluster.worker("w1"), cluster.worker("w2")
    images = marked_images(cluster.inbox, 60)
    producer = cluster.producer()
    wait_until(lambda: sum(map(bool, map(sidecar_doc, images))) >= 10, 120, "10 images done")

    cluster.redis.restart(empty=True)

    wait_until(lambda: all_done(images), 240, "every image done after the restart")
    assert producer.events("broker_reconnected") or producer.events("broker_restarted")
    assert leftovers(cluster.inbox) == []


def test_producer_restarted_mid_burst_loses_nothing_and_redoes_nothing(cluster: Cluster) -> None:
    """The producer stops and a new one starts mid-burst: every image done, each composed once
    (the queued marks keep the new producer from sending what is already on its way)."""
    cluster.fake.delay_s = 0.05
    cluster.worker("w1"), cluster.worker("w2")
    images = marked_images(cluster.inbox, 60)
    first = cluster.producer("first")
    wait_until(lambda: sum(map(bool, map(sidecar_doc, images))) >= 10, 120, "10 images done")

    first.stop()
    second = cluster.producer("second")

    wait_until(lambda: all_done(images), 240, "every image done")
    assert set(per_image(cluster, images).values()) == {1}
    assert second.events("scan_done")


def test_task_longer_than_visibility_timeout_is_left_to_its_holder(cluster: Cluster) -> None:
    """A slow model keeps an image past the visibility timeout: Redis hands the message to the
    other worker, which finds the lock held and leaves the image alone; composed once."""
    cluster.fake.delay_s = 16  # the visibility timeout is 10 s
    no_limit = {"task_time_limit_s": None}
    w1, w2 = cluster.worker("w1", **no_limit), cluster.worker("w2", **no_limit)
    cluster.producer(**no_limit)
    wait_warm(w1, w2)
    (image,) = marked_images(cluster.inbox, 1)

    wait_until(lambda: all_done([image]), 60, "the slow image done")

    assert len(cluster.fake.calls_for(marker(image))) == 1
    turned_away = w1.events("image_locked") + w2.events("image_locked")
    assert len(turned_away) >= 1, "the message was not handed out a second time"
    assert len(worked_on(w1) | worked_on(w2)) == 1


def test_worker_whose_mount_lacks_the_file_acknowledges_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A worker whose inbox folder is empty (share not mounted): one clear line, then the
    task is gone; it is not handed out again and again."""
    empty = tmp_path / "not-mounted"
    empty.mkdir()
    lonely = cluster.worker("lonely", inboxes={"inbox": str(empty)})
    (image,) = marked_images(cluster.inbox, 1)
    cluster.producer()

    wait_until(lambda: lonely.events("image_not_visible"), 60, "the worker to report the file")
    time.sleep(4)  # long enough for a looping task to come back

    (line,) = lonely.events("image_not_visible")
    assert line["image"] == f"inbox/{image.parent.name}/{image.name}"
    assert "mounted" in line["reason"]
    client = Redis.from_url(cluster.redis.url)
    assert client.llen("promptd") == 0 and client.hlen("unacked") == 0
    assert sidecar_doc(image) is None
    client.close()


def test_image_that_killed_two_worker_processes_is_quarantined(cluster: Cluster) -> None:
    """Each time a worker's child starts composing the poison image it is killed: after two
    deaths the next delivery writes an error record instead of trying again."""
    images = marked_images(cluster.inbox, 3)
    poison = marker(images[1])
    client = Redis.from_url(cluster.redis.url)
    kills: list[int] = []

    def kill_composer(name: str | None) -> None:
        if name != poison:
            return
        for key in client.scan_iter("promptd:worker:*"):
            fields = client.hgetall(key)
            if fields.get(b"current", b"").endswith(f"{poison}.png".encode()):
                os.kill(int(fields[b"child_pid"]), signal.SIGKILL)
                kills.append(int(fields[b"child_pid"]))
                return

    cluster.fake.on_call = kill_composer
    w1 = cluster.worker("w1")
    cluster.producer()

    wait_until(lambda: (sidecar_doc(images[1]) or {}).get("status") == "error", 120, "quarantine")

    doc = sidecar_doc(images[1])
    assert doc is not None and doc["error"]["kind"] == "quarantined"
    assert "2 worker processes died" in doc["error"]["message"]
    assert not txt_path(images[1]).exists()
    assert len(kills) == 2
    assert w1.events("worker_process_died")
    wait_until(lambda: all_done([images[0], images[2]]), 60, "the other images done")
    client.close()


def test_run_with_worker_flag_processes_images_on_its_own(cluster: Cluster) -> None:
    """`promptd run --worker`: the producer's own local worker drains the inbox alone."""
    images = marked_images(cluster.inbox, 5)
    producer = cluster.producer(extra=("--worker",))

    wait_until(lambda: all_done(images), 120, "every image done by the local worker")
    assert producer.events("local_worker_started")
