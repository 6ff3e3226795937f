"""A producer, workers, a redis-server and the fake Ollama on one machine, for tests and bench.

`Cluster` writes one config.yaml per process (all on one inbox unless told otherwise) and
starts `promptd run` and `promptd worker` as real subprocesses, each worker in its own process
group so `kill_group` takes its prefork child too. `marked_images` puts each image in its own
folder whose rule's `hint` carries `promptd-test-image:NAME`, so the fake Ollama's `calls` say
which image each model call was for.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

from daemon.sidecar import read_sidecar, validate_sidecar
from tests.daemon_helpers import Daemon, png_bytes, temp_files, wait_until
from tests.fake_ollama import FakeOllama, ModelCall
from tests.redis_server import RedisServer

FAST = {
    "visibility_timeout_s": 10,
    "task_time_limit_s": 9,
    "lock_timeout_s": 5,
    "file_wait_s": 1,
    "restore_interval_s": 1,
    "heartbeat_s": 1,
}


def marked_images(inbox: Path, count: int, start: int = 0) -> list[Path]:
    """``count`` small distinct PNGs, each in its own folder with a marking rule."""
    images = []
    for index in range(start, start + count):
        name = f"img{index:04d}"
        folder = inbox / f"g{index:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".promptd.yaml").write_text(f'hint: "promptd-test-image:{name}"\n')
        image = folder / f"{name}.png"
        image.write_bytes(png_bytes(index))
        images.append(image)
    return images


def marker(image: Path) -> str:
    """The marker of an image made by ``marked_images``."""
    return image.stem


def write_config(
    root: Path,
    name: str,
    clip_dir: Path,
    cache_dir: Path,
    ollama_url: str,
    inbox: Path,
    distributed: dict[str, Any] | None,
) -> Path:
    """``root/config-NAME.yaml``: the tiny CLIP, the fake Ollama, short settle time, long
    rescans, the HTTP API on a free port; ``distributed`` None means one machine (no broker)."""
    config: dict[str, Any] = {
        "inbox": str(inbox),
        "cache_dir": str(cache_dir),
        "state_dir": str(root / f"state-{name}"),
        "clip": {"model": str(clip_dir), "device": "cpu", "offline": True},
        "ollama": {"host": ollama_url, "retries": 0},
        "log": {"format": "json", "level": "info"},
        "watch": {"settle_s": 0.3, "rescan_interval_s": 600},
        "api": {"listen": "127.0.0.1:0"},  # a free port: never fight another run over 8765
    }
    if distributed is not None:
        config["distributed"] = distributed
    path = root / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class Cluster:
    """Configs and processes of one distributed test; ``stop`` ends every process it started."""

    def __init__(
        self, root: Path, clip_dir: Path, cache_dir: Path, fake: FakeOllama, redis: RedisServer
    ) -> None:
        self.root, self.clip_dir, self.cache_dir = root, clip_dir, cache_dir
        self.fake, self.redis = fake, redis
        self.inbox = root / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.procs: list[Daemon] = []

    def config(self, name: str, *, inbox: Path | None = None, **distributed: Any) -> Path:
        """A config.yaml for one process: the tiny CLIP, the fake Ollama, the test broker."""
        settings = {"broker": self.redis.url, **FAST, **distributed}
        return write_config(self.root, name, self.clip_dir, self.cache_dir, self.fake.url,
                            inbox or self.inbox, settings)  # fmt: skip

    def producer(
        self, name: str = "producer", *, extra: Iterable[str] = (), **distributed: Any
    ) -> Daemon:
        """Start `promptd run` (add ``--worker`` through ``extra``); waits until it is ready."""
        proc = Daemon(self.config(name, **distributed), self.root / f"{name}.log",
                      command=("run", *extra), own_group=True)  # fmt: skip
        self.procs.append(proc)
        proc.wait_ready(90)
        return proc

    def worker(self, name: str, *, inbox: Path | None = None, **distributed: Any) -> Daemon:
        """Start `promptd worker --name NAME` (not waiting: see ``wait_workers``)."""
        config = self.config(name, inbox=inbox, **distributed)
        proc = Daemon(config, self.root / f"{name}.log", command=("worker", "--name", name),
                      own_group=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Stop every process this cluster started (SIGTERM to all at once, then each is waited
        for, SIGKILL of its group if it lingers)."""
        for proc in self.procs:
            if proc.alive():
                proc.signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            proc.stop()


def wait_warm(*workers: Daemon, timeout: float = 120) -> None:
    """Wait until each worker is connected and its child has loaded the models."""

    for worker in workers:
        wait_until(
            lambda w=worker: w.events("worker_warm") or (not w.alive() and _died(w)),
            timeout,
            f"worker {worker.log_path.name} to warm up",
        )


def _died(proc: Daemon) -> bool:
    raise AssertionError(f"worker exited with {proc.proc.returncode}:\n{proc.tail()}")


def complete_and_valid(image: Path) -> bool:
    """The image has exactly one .txt and one .json, the .json valid and ``ok``."""
    names = [entry.name for entry in image.parent.iterdir()]
    if sorted(n for n in names if n.endswith((".txt", ".json"))) != [
        f"{image.stem}.json",
        f"{image.stem}.txt",
    ]:
        return False
    doc = read_sidecar(image.with_suffix(".json"))
    return doc is not None and doc["status"] == "ok" and validate_sidecar(doc) == []


def all_done(images: Iterable[Path]) -> bool:
    """Every image complete and valid."""
    return all(complete_and_valid(image) for image in images)


def overlapping(calls: list[ModelCall]) -> list[tuple[str, int]]:
    """Markers whose model calls overlapped in time (two workers composing one image)."""
    by_marker: dict[str, list[ModelCall]] = {}
    for call in calls:
        if call.marker is not None:
            by_marker.setdefault(call.marker, []).append(call)
    found = []
    for name, group in by_marker.items():
        group.sort(key=lambda c: c.started)
        if any(b.started < a.ended for a, b in pairwise(group)):
            found.append((name, len(group)))
    return found


def leftovers(root: Path) -> list[Path]:
    """promptd temp files under ``root`` (a half-written sidecar would leave one)."""
    return temp_files(root)
