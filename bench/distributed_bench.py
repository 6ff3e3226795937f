"""Several workers on one inbox: throughput with 1, 2 and 4 worker processes, and the broker's cost.

The model dominates, as on real hardware: the fake Ollama (a threading HTTP server, so workers
are served in parallel) answers each call after ``--model-delay`` seconds (0.2 s), in `speed`
mode (one call per image), with the tiny CLIP on the CPU. Each run starts from nothing: a fresh
redis-server (127.0.0.1, free port), N `promptd worker` processes (waited for until their
models are loaded), one `promptd run` producer; then the burst of ``--images`` distinct small
PNGs is copied into a new folder of the watched inbox. Time: first copy to the last .json
written (its mtime).

(a) images per second for N = 1, 2, 4 and the ratio to one worker. Goal: >= 0.9 x N.
(b) the broker's added time per image: the 1-worker run against `promptd run` without a
    broker (the in-process queue and worker) on the same burst, with the same watch settings.
    Goal: under 5%.

Results are printed as a table and written to bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.daemon_bench import json_files
from daemon.config import ClipSettings
from tests.daemon_helpers import Daemon, wait_until, write_images
from tests.distributed_helpers import Cluster, wait_warm, write_config
from tests.fake_ollama import FakeOllama
from tests.redis_server import RedisServer
from tests.tinyclip import build_tiny_clip

RESULTS = Path(__file__).parent / "results" / "distributed.json"
GOALS = {"scaling": 0.9, "overhead_pct": 5.0}
# The shipped defaults, not the tests' short timings: this is how users run it.
DEFAULTS = {
    "visibility_timeout_s": 3600,
    "task_time_limit_s": 1800,
    "lock_timeout_s": 120,
    "file_wait_s": 60,
    "restore_interval_s": 10,
    "heartbeat_s": 10,
}


def burst_s(sources: Sequence[Path], dest: Path, alive: Sequence[Daemon]) -> float:
    """Copy the images into ``dest`` (a new folder in the watched inbox); seconds from the
    first copy to the last .json's mtime."""
    dest.mkdir()
    time.sleep(0.5)  # the new folder's watch is in place before the clock starts
    started = time.time()
    for src in sources:
        shutil.copyfile(src, dest / src.name)
    wait_until(
        lambda: len(json_files(dest)) >= len(sources) or not all(p.alive() for p in alive),
        900,
        "the burst to finish",
    )
    for proc in alive:
        assert proc.alive(), proc.tail()
    return max(p.stat().st_mtime_ns for p in json_files(dest)) / 1e9 - started


def distributed_run(
    root: Path, clip: Path, cache: Path, fake: FakeOllama, sources: Sequence[Path], workers: int
) -> float:
    """One burst through a producer and ``workers`` worker processes on a fresh broker."""
    redis = RedisServer(root / "redis").start()
    cluster = Cluster(root, clip, cache, fake, redis)
    try:
        procs = [cluster.worker(f"w{i}", **DEFAULTS) for i in range(workers)]
        producer = cluster.producer(**DEFAULTS)
        wait_warm(*procs, timeout=300)
        return burst_s(sources, cluster.inbox / "burst", [producer, *procs])
    finally:
        cluster.stop()
        redis.stop()


def in_process_run(
    root: Path, clip: Path, cache: Path, fake: FakeOllama, sources: Sequence[Path]
) -> float:
    """The same burst through `promptd run` without a broker."""
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    path = write_config(root, "daemon", clip, cache, fake.url, inbox, None)
    daemon = Daemon(path, root / "daemon.log")
    try:
        daemon.wait_ready(180)
        return burst_s(sources, inbox / "burst", [daemon])
    finally:
        daemon.stop()


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every measurement; the numbers as a dict."""
    clip = build_tiny_clip(tmp / "clip")
    cache = tmp / "cache"
    from daemon.pipeline.analyze.clip import ClipAnalyzer

    ClipAnalyzer(ClipSettings(model=str(clip), device="cpu", offline=True), cache).load()
    sources = write_images(tmp / "sources", args.images)
    result: dict[str, Any] = {"images": args.images, "model_delay_s": args.model_delay}
    with FakeOllama() as fake:
        fake.delay_s = args.model_delay
        seconds = in_process_run(tmp / "daemon", clip, cache, fake, sources)
        result["in_process"] = {
            "seconds": round(seconds, 2),
            "images_per_s": round(args.images / seconds, 2),
        }
        runs = {}
        for workers in args.workers:
            seconds = distributed_run(tmp / f"n{workers}", clip, cache, fake, sources, workers)
            runs[str(workers)] = {
                "seconds": round(seconds, 2),
                "images_per_s": round(args.images / seconds, 2),
            }
        result["distributed"] = runs
    one = runs[str(args.workers[0])]["images_per_s"]
    for workers, row in runs.items():
        row["ratio"] = round(row["images_per_s"] / one, 2)
        row["scaling"] = round(row["ratio"] / (int(workers) / args.workers[0]), 2)
    if "1" in runs:
        daemon_s = result["in_process"]["seconds"]
        added = runs["1"]["seconds"] - daemon_s
        result["broker_overhead"] = {
            "ms_per_image": round(added / args.images * 1000, 1),
            "pct": round(added / daemon_s * 100, 1),
        }
    return result


def report(result: dict[str, Any]) -> str:
    """The table printed at the end."""
    lines = [
        f"distributed: {result['images']} images, fake model {result['model_delay_s']} s per call",
        f"{'run':<28}{'seconds':>9}{'images/s':>10}{'x 1 worker':>12}{'per worker':>12}",
    ]
    daemon = result["in_process"]
    lines.append(
        f"{'promptd run (no broker)':<28}{daemon['seconds']:>9}{daemon['images_per_s']:>10}"
    )
    for workers, row in result["distributed"].items():
        label = f"{workers} worker process(es)"
        lines.append(
            f"{label:<28}{row['seconds']:>9}{row['images_per_s']:>10}{row['ratio']:>12}{row['scaling']:>12}"
        )
    lines.append(f"goal: per worker >= {GOALS['scaling']} (ratio >= {GOALS['scaling']} x N)")
    overhead = result.get("broker_overhead")
    if overhead:
        lines.append(
            f"broker's added time: {overhead['ms_per_image']} ms per image, "
            f"{overhead['pct']}% of the in-process run (goal < {GOALS['overhead_pct']}%)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, save the numbers; 0 even when a goal is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench distributed", description=__doc__)
    parser.add_argument("--images", type=int, default=200, help="burst size")
    parser.add_argument(
        "--model-delay", type=float, default=0.2, help="fake model seconds per call"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("distributed: skipped (redis-server is not installed)")
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="promptd-distributed-bench-") as tmp:
        result = run(args, Path(tmp))
    result["environment"] = {
        "cpus": os.cpu_count(),
        "load_1min_at_end": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "total_s": round(time.perf_counter() - started, 1),
    }
    print(report(result))
    print(f"total {result['environment']['total_s']} s; written to {RESULTS}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
