"""`promptd run` overhead: the daemon against the bare pipeline, latency, start-up scan, memory.

Models cost nothing here, so what is left is the daemon's own cost: the tiny CLIP
(tests/tinyclip.py) and the fake Ollama server (tests/fake_ollama.py) in `speed` mode with
no delay, both serving the daemon (a real `promptd run` subprocess with the default watch
settings, JSON log at info level) and the bare pipeline alike. Four figures, each with its
goal from issue 3:

(a) throughput on a burst: N images copied into the watched inbox, timed from the first copy
    to the last .json written (its mtime), against ``process_batch`` over the same images in
    a fresh folder, in-process, in CLIP-sized chunks as `promptd process` does; best of
    ``--rounds``, taken in turns. Start-up and one warm-up image are excluded from both.
    Goal: the daemon takes at most 5% longer.
(b) latency from a file's close to its .json (the .json's mtime), p50 and p95, for images
    dropped one at a time into the same daemon (inotify, quiet_s 0.2). Goal: p50 <= 0.5 s.
(c) the start-up scan of a tree whose images all have up-to-date sidecars: ``pending_images``
    over it, in-process, dentry cache warm (the tree was just written); the daemon's own
    start-up scan of that tree (its scan_done log line) is shown beside it. The sidecars are
    one real pair, made by the pipeline, replicated with each image's name. Goal: <= 5 s.
(d) peak RSS (VmHWM) of a daemon started on a backlog of M pending images against one on an
    empty inbox, sampled for a few seconds after READY. Goal: at most 50 MB more.

Results are printed as a table and written to bench/results/daemon.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from daemon.config import load_config
from daemon.logs import configure_logging
from daemon.pipeline import Context, process_batch
from daemon.pipeline.backends import build_context
from daemon.sidecar import dump_sidecar, read_sidecar
from daemon.watch.scan import pending_images
from tests.daemon_helpers import Daemon, png_bytes, wait_until, write_images
from tests.fake_ollama import FakeOllama
from tests.tinyclip import build_tiny_clip

RESULTS = Path(__file__).parent / "results" / "daemon.json"
GOALS = {"overhead_pct": 5.0, "latency_p50_s": 0.5, "scan_s": 5.0, "memory_mb": 50.0}
_PLACEHOLDER = "@@promptd-bench-name@@"


# --- setting up ---------------------------------------------------------------------------------


def write_config(folder: Path, inbox: Path, clip_dir: Path, ollama_url: str) -> Path:
    """A config.yaml with the default watch settings, the tiny CLIP and the fake server."""
    config = {
        "inbox": str(inbox),
        "cache_dir": str(folder / "cache"),
        "clip": {"model": str(clip_dir), "device": "cpu", "offline": True},
        "ollama": {"host": ollama_url},
        "log": {"format": "json", "level": "info"},
        "api": {"listen": "127.0.0.1:0"},  # each daemon on a free port
    }
    path = folder / f"config-{inbox.name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    inbox.mkdir(parents=True, exist_ok=True)
    return path


def json_files(folder: Path) -> list[Path]:
    """The .json files directly in ``folder``."""
    with os.scandir(folder) as entries:
        return [Path(e.path) for e in entries if e.name.endswith(".json")]


# --- (a) throughput --------------------------------------------------------------------------------


def own_cpu_s() -> float:
    """CPU seconds this process has used (every thread: the fake server's too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """CPU seconds process ``pid`` has used (utime + stime from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_pipeline_s(ctx: Context, sources: Sequence[Path], dest: Path) -> tuple[float, float]:
    """Copy the images into ``dest`` (untimed), then run ``process_batch`` over them:
    (seconds, CPU seconds)."""
    dest.mkdir(parents=True)
    paths = [Path(shutil.copyfile(src, dest / src.name)) for src in sources]
    batch = ctx.config.clip.batch_size
    cpu = own_cpu_s()
    started = time.perf_counter()
    for i in range(0, len(paths), batch):
        results = process_batch(paths[i : i + batch], ctx)
        assert all(r.outcome == "ok" for r in results), [r.reason for r in results]
    return time.perf_counter() - started, own_cpu_s() - cpu


def daemon_burst_s(daemon: Daemon, sources: Sequence[Path], dest: Path) -> tuple[float, float]:
    """Copy the images into a new folder of the watched inbox: (seconds until the last .json,
    CPU seconds of the daemon and of this process, which copies and serves the fake model)."""
    dest.mkdir()
    time.sleep(0.5)  # the new folder's watch is in place before the clock starts
    cpu = own_cpu_s() + process_cpu_s(daemon.pid)
    started = time.time()
    for src in sources:
        shutil.copyfile(src, dest / src.name)
    wait_until(
        lambda: len(json_files(dest)) >= len(sources) or not daemon.alive(),
        600,
        "the daemon to finish the burst",
    )
    assert daemon.alive(), daemon.tail()
    used = own_cpu_s() + process_cpu_s(daemon.pid) - cpu
    last = max(p.stat().st_mtime_ns for p in json_files(dest)) / 1e9
    return last - started, used


# --- (b) latency -----------------------------------------------------------------------------------


def latencies_s(daemon: Daemon, folder: Path, count: int, pause_s: float) -> list[float]:
    """Drop images one at a time; for each, seconds from its close to its .json's mtime."""
    folder.mkdir()
    time.sleep(0.5)
    out = []
    for index in range(count):
        image = folder / f"drop{index:03d}.png"
        data = png_bytes(10_000 + index)
        with image.open("wb") as handle:
            handle.write(data)
        closed = time.time()
        sidecar = image.with_suffix(".json")
        wait_until(sidecar.exists, 60, f"{sidecar.name}", interval=0.005)
        out.append(sidecar.stat().st_mtime_ns / 1e9 - closed)
        time.sleep(pause_s)
    assert daemon.alive(), daemon.tail()
    return out


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# --- (c) start-up scan -----------------------------------------------------------------------------


def build_fresh_tree(root: Path, ctx: Context, count: int, per_folder: int) -> int:
    """``count`` identical tiny images under ``root`` (``per_folder`` per folder), each with the
    sidecars the pipeline wrote for the first one, renamed to match; returns files written."""
    template = root / "template.png"
    template.write_bytes(png_bytes(0, size=(8, 8)))
    (result,) = process_batch([template], ctx)
    assert result.outcome == "ok", result.reason
    doc = read_sidecar(template.with_suffix(".json"))
    assert doc is not None
    stat = template.stat()
    data = template.read_bytes()
    txt = template.with_suffix(".txt").read_bytes()
    named = {
        **doc,
        "image": {**doc["image"], "file": _PLACEHOLDER + ".png"},
        "outputs": {**doc["outputs"], "txt": _PLACEHOLDER + ".txt"},
    }
    json_bytes = dump_sidecar(named)
    for path in (template, template.with_suffix(".json"), template.with_suffix(".txt")):
        path.unlink()
    written = 0
    for start in range(0, count, per_folder):
        folder = root / f"shoot{start // per_folder:04d}"
        folder.mkdir()
        for index in range(start, min(start + per_folder, count)):
            stem = f"img{index:06d}"
            image = folder / f"{stem}.png"
            _write(image, data)
            os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            _write(folder / f"{stem}.txt", txt)
            _write(
                folder / f"{stem}.json", json_bytes.replace(_PLACEHOLDER.encode(), stem.encode())
            )
            written += 3
    return written


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def scan_s(ctx: Context, root: Path) -> tuple[float, int]:
    """Seconds for ``pending_images`` over ``root``, and how many it found pending."""
    started = time.perf_counter()
    pending = sum(1 for _ in pending_images(root, ctx, redo_degraded=True))
    return time.perf_counter() - started, pending


def daemon_scan_ms(config: Path, log: Path) -> tuple[float, int]:
    """The start-up scan of a daemon on ``config``: (ms, pending) from its scan_done line."""
    daemon = Daemon(config, log)
    try:
        daemon.wait_ready(300)
        (line, *_) = wait_until(lambda: daemon.events("scan_done"), 300, "the start-up scan")
    finally:
        daemon.stop()
    return float(line["ms"]), int(line["pending"])


# --- (d) memory ------------------------------------------------------------------------------------


def proc_kb(pid: int, field: str) -> int:
    """A ``Vm*`` field of /proc/<pid>/status in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_mb(config: Path, log: Path, inbox: Path, seconds: float) -> tuple[float, int]:
    """Start a daemon, sample it for ``seconds`` after READY; (VmHWM in MB, images done)."""
    daemon = Daemon(config, log)
    try:
        daemon.wait_ready(300)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            proc_kb(daemon.pid, "VmRSS")  # keeps the process observed while it works
            time.sleep(0.1)
        peak = proc_kb(daemon.pid, "VmHWM") / 1024
    finally:
        daemon.stop()
    done = sum(1 for _ in inbox.glob("*.json"))
    return peak, done


# --- the run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every measurement, in one temporary folder."""
    clip_dir = build_tiny_clip(tmp / "tiny-clip")
    configure_logging("info", "json", stream=(tmp / "bare.log").open("w", encoding="utf-8"))
    result: dict[str, Any] = {}
    with FakeOllama() as fake:
        sources = write_images(tmp / "sources", args.images)

        # (a) and (b): one daemon, one in-process pipeline, same config but the inbox.
        bare_config = load_config(write_config(tmp, tmp / "bare", clip_dir, fake.url))
        ctx = build_context(bare_config)
        warm = tmp / "bare" / "warm.png"
        warm.write_bytes(png_bytes(99_999))
        process_batch([warm], ctx)  # loads CLIP, opens the connection
        config = write_config(tmp, tmp / "watched", clip_dir, fake.url)
        daemon = Daemon(config, tmp / "daemon.log")
        try:
            daemon.wait_ready(300)
            wait_until(lambda: daemon.events("scan_done"), 60, "the start-up scan")
            first = tmp / "watched" / "warm.png"
            first.write_bytes(png_bytes(99_998))
            wait_until(first.with_suffix(".json").exists, 60, "the warm-up image")
            bare, served = [], []
            for round_ in range(args.rounds):
                bare.append(bare_pipeline_s(ctx, sources, tmp / "bare" / f"round{round_}"))
                served.append(daemon_burst_s(daemon, sources, tmp / "watched" / f"round{round_}"))
            lat = latencies_s(daemon, tmp / "watched" / "drops", args.drops, args.pause)
            # (a') the same comparison with a model that takes time, as real ones do.
            fake.delay_s = args.model_delay
            slow = sources[: args.slow_images]
            slow_bare = bare_pipeline_s(ctx, slow, tmp / "bare" / "slow")[0]
            slow_daemon = daemon_burst_s(daemon, slow, tmp / "watched" / "slow")[0]
            fake.delay_s = 0.0
        finally:
            daemon.stop()
        bare_s, daemon_s = min(s for s, _ in bare), min(s for s, _ in served)
        bare_cpu, daemon_cpu = min(c for _, c in bare), min(c for _, c in served)
        result["throughput"] = {
            "images": args.images,
            "rounds": args.rounds,
            "bare_s": [round(s, 3) for s, _ in bare],
            "daemon_s": [round(s, 3) for s, _ in served],
            "bare_cpu_s": [round(c, 2) for _, c in bare],
            "daemon_cpu_s": [round(c, 2) for _, c in served],
            "overhead_pct": round((daemon_s / bare_s - 1) * 100, 1),
            "cpu_overhead_pct": round((daemon_cpu / bare_cpu - 1) * 100, 1),
            "bare_images_per_s": round(args.images / bare_s, 1),
            "daemon_images_per_s": round(args.images / daemon_s, 1),
        }
        result["throughput_with_latency"] = {
            "images": len(slow),
            "model_delay_s": args.model_delay,
            "bare_s": round(slow_bare, 3),
            "daemon_s": round(slow_daemon, 3),
            "overhead_pct": round((slow_daemon / slow_bare - 1) * 100, 1),
        }
        result["latency"] = {
            "images": len(lat),
            "p50_s": round(percentile(lat, 50), 3),
            "p95_s": round(percentile(lat, 95), 3),
            "max_s": round(max(lat), 3),
            "mean_s": round(statistics.fmean(lat), 3),
        }

        # (c) the start-up scan of a large, up-to-date tree.
        tree = tmp / "tree"
        tree_config = write_config(tmp, tree, clip_dir, fake.url)
        tree_ctx = build_context(load_config(tree_config))
        started = time.perf_counter()
        files = build_fresh_tree(tree, tree_ctx, args.scan_images, args.per_folder)
        built_s = time.perf_counter() - started
        seconds, pending = scan_s(tree_ctx, tree)
        assert pending == 0, f"{pending} images read as pending: the tree is not fresh"
        daemon_ms, daemon_pending = daemon_scan_ms(tree_config, tmp / "tree-daemon.log")
        assert daemon_pending == 0, daemon_pending
        result["scan"] = {
            "images": args.scan_images,
            "folders": -(-args.scan_images // args.per_folder),
            "files": files,
            "build_s": round(built_s, 1),
            "pending": pending,
            "pending_images_s": round(seconds, 2),
            "daemon_startup_scan_s": round(daemon_ms / 1000, 2),
        }
        shutil.rmtree(tree)

        # (d) memory: a backlog against an empty inbox.
        empty = write_config(tmp, tmp / "empty", clip_dir, fake.url)
        backlog_inbox = tmp / "backlog"
        backlog = write_config(tmp, backlog_inbox, clip_dir, fake.url)
        blobs = [png_bytes(i) for i in range(64)]
        for index in range(args.backlog):
            _write(backlog_inbox / f"img{index:05d}.png", blobs[index % len(blobs)])
        empty_mb, _ = peak_rss_mb(empty, tmp / "empty.log", tmp / "empty", args.sample_s)
        backlog_mb, done = peak_rss_mb(backlog, tmp / "backlog.log", backlog_inbox, args.sample_s)
        result["memory"] = {
            "backlog": args.backlog,
            "sample_s": args.sample_s,
            "empty_peak_mb": round(empty_mb, 1),
            "backlog_peak_mb": round(backlog_mb, 1),
            "difference_mb": round(backlog_mb - empty_mb, 1),
            "backlog_done_while_sampled": done,
        }
    return result


def verdicts(result: Mapping[str, Any]) -> dict[str, bool]:
    """Whether each goal is met."""
    return {
        "throughput": result["throughput"]["overhead_pct"] <= GOALS["overhead_pct"],
        "latency": result["latency"]["p50_s"] <= GOALS["latency_p50_s"],
        "scan": result["scan"]["pending_images_s"] <= GOALS["scan_s"],
        "memory": result["memory"]["difference_mb"] <= GOALS["memory_mb"],
    }


def report(result: Mapping[str, Any]) -> str:
    """The printed table."""
    t, lat, scan, mem = (result[k] for k in ("throughput", "latency", "scan", "memory"))
    slow = result["throughput_with_latency"]
    met = verdicts(result)
    rows: list[tuple[str, str, str, bool]] = [
        (
            f"(a) {t['images']}-image burst, daemon vs bare",
            f"{min(t['daemon_s']):.2f} s vs {min(t['bare_s']):.2f} s ({t['overhead_pct']:+.1f}%)",
            f"<= +{GOALS['overhead_pct']:.0f}%",
            met["throughput"],
        ),
        (
            f"(a') same, {slow['images']} images, model {slow['model_delay_s']} s",
            f"{slow['daemon_s']:.2f} s vs {slow['bare_s']:.2f} s ({slow['overhead_pct']:+.1f}%)",
            f"<= +{GOALS['overhead_pct']:.0f}%",
            slow["overhead_pct"] <= GOALS["overhead_pct"],
        ),
        (
            f"(b) close -> .json, {lat['images']} drops",
            f"p50 {lat['p50_s']:.3f} s, p95 {lat['p95_s']:.3f} s",
            f"p50 <= {GOALS['latency_p50_s']} s",
            met["latency"],
        ),
        (
            f"(c) scan {scan['images']:,} fresh images",
            f"{scan['pending_images_s']:.2f} s (daemon: {scan['daemon_startup_scan_s']:.2f} s)",
            f"<= {GOALS['scan_s']:.0f} s",
            met["scan"],
        ),
        (
            f"(d) peak RSS, {mem['backlog']:,} backlog vs empty",
            f"{mem['difference_mb']:+.1f} MB ({mem['backlog_peak_mb']:.0f} vs "
            f"{mem['empty_peak_mb']:.0f} MB)",
            f"<= +{GOALS['memory_mb']:.0f} MB",
            met["memory"],
        ),
    ]
    env = result["environment"]
    lines = [
        "promptd run vs the bare pipeline: tiny CLIP on CPU, fake Ollama (speed mode, no delay), "
        f"{env['cpus']} CPUs",
        f"{'measure':<40}{'result':<42}{'goal':<15}met",
        *(f"{a:<40}{b:<42}{c:<15}{'yes' if d else 'NO'}" for a, b, c, d in rows),
        f"(a) per round: daemon {t['daemon_s']} s, bare {t['bare_s']} s (best of each compared); "
        f"CPU: daemon {t['daemon_cpu_s']} s, bare {t['bare_cpu_s']} s "
        f"({t['cpu_overhead_pct']:+.1f}%)",
        f"(c) tree: {scan['folders']} folders, {scan['files']:,} files, built in "
        f"{scan['build_s']} s; pending found: {scan['pending']}",
        f"(d) backlog images done during the {mem['sample_s']} s sample: "
        f"{mem['backlog_done_while_sampled']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, save the numbers; 0 even when a goal is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench daemon", description=__doc__)
    parser.add_argument("--images", type=int, default=500, help="burst size for (a)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of (a), best counted")
    parser.add_argument("--slow-images", type=int, default=100, help="burst size for (a')")
    parser.add_argument(
        "--model-delay", type=float, default=0.1, help="fake model latency in seconds for (a')"
    )
    parser.add_argument("--drops", type=int, default=50, help="images dropped one by one (b)")
    parser.add_argument("--pause", type=float, default=0.2, help="pause between drops (b)")
    parser.add_argument("--scan-images", type=int, default=100_000, help="tree size for (c)")
    parser.add_argument("--per-folder", type=int, default=1000, help="images per folder (c)")
    parser.add_argument("--backlog", type=int, default=10_000, help="pending images for (d)")
    parser.add_argument("--sample-s", type=float, default=6.0, help="RSS sampling time (d)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="promptd-daemon-bench-") as tmp:
        result = run(args, Path(tmp))
    result["environment"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "total_s": round(time.perf_counter() - started, 1),
    }
    result["goals_met"] = verdicts(result)
    print(report(result))
    print(f"total {result['environment']['total_s']} s; written to {RESULTS}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
