"""The HTTP API's cost: POST /api/images/analyze against the pipeline called directly.

The tiny CLIP (tests/tinyclip.py) and the fake Ollama server (tests/fake_ollama.py) in `speed`
mode serve both sides; the API runs on a real uvicorn server on 127.0.0.1 (a free port) and
is called with one keep-alive httpx client, multipart, the same image each time. Three
figures, each with its goal from issue 9:

(a) request -> response for N requests against the same stages called in-process
    (``load_upload``, ``upload_rule``, ``run_upload``, ``upload_document``), zero-latency
    model, taken in turns; p50 and p95. Goal: the API adds under 20 ms at p50.
(b) the same N requests while the worker (the daemon's own ``Worker``) works through a
    ``--backlog``-image folder queue, kept full. Goal: the backlog adds under one model call
    at p50 (a model call measured here as the worker's mean time per image).
(c) (b) again with a model that takes ``--model-delay`` s, where "one model call" is that.

Results are printed as a table and written to bench/results/api.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from daemon.api.deps import build_deps
from daemon.api.server import ApiServer
from daemon.config import load_config
from daemon.logs import configure_logging
from daemon.pipeline.upload import load_upload, run_upload, upload_document, upload_rule
from daemon.service.worker import Worker
from tests.daemon_helpers import write_images
from tests.fake_ollama import FakeOllama
from tests.fixtures_api import view_for
from tests.images import make_samples
from tests.tinyclip import build_tiny_clip

RESULTS = Path(__file__).parent / "results" / "api.json"
GOALS = {"overhead_p50_ms": 20.0, "backlog_added_calls": 1.0}


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(values_s: list[float]) -> dict[str, float]:
    """p50, p95 and mean in milliseconds."""
    ms = [v * 1000 for v in values_s]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


class Backlog:
    """The daemon's worker over a folder queue that is kept full (done images are undone)."""

    def __init__(self, view: Any, images: list[Path]) -> None:
        self.view, self.images = view, images
        self.worker = Worker(view.live, view.queue, view.tally)
        self._stop = threading.Event()
        self._refill = threading.Thread(target=self._keep_full, daemon=True)

    def __enter__(self) -> Backlog:
        for image in self.images:
            self.view.queue.put(image)
        self.started = time.perf_counter()
        self.done_before = self.view.tally.outcomes["ok"] + self.view.tally.outcomes["degraded"]
        self.worker.thread.start()
        self._refill.start()
        return self

    def _keep_full(self) -> None:
        while not self._stop.wait(0.2):
            if len(self.view.queue) < len(self.images) // 2:
                for image in self.images:
                    for suffix in (".json", ".txt"):
                        image.with_suffix(suffix).unlink(missing_ok=True)
                    self.view.queue.put(image)

    def per_image_s(self) -> float:
        """The worker's mean time per image so far (the backlog's model call, all included)."""
        done = self.view.tally.outcomes["ok"] + self.view.tally.outcomes["degraded"]
        return (time.perf_counter() - self.started) / max(1, done - self.done_before)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.view.live.stop.set()
        self.view.queue.stop()
        self.worker.thread.join(60)
        self._refill.join(10)


def api_latencies(client: httpx.Client, data: bytes, count: int) -> list[float]:
    """``count`` POST /api/images/analyze round trips, one after another."""
    out = []
    for _ in range(count):
        started = time.perf_counter()
        answer = client.post(
            "/api/images/analyze", files={"image": ("sunset.jpg", data, "image/jpeg")}
        )
        out.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
    return out


def direct_once(ctx: Any, data: bytes) -> float:
    """The same stages in-process, once."""
    started = time.perf_counter()
    loaded = load_upload(data, "sunset.jpg", ctx.config.images)
    outcome = run_upload(loaded, upload_rule(ctx, mode=None, hint=""), ctx)
    upload_document(outcome)
    return time.perf_counter() - started


def world(tmp: Path, clip_dir: Path, ollama_url: str, name: str) -> Any:
    """A config and the service's pieces (no threads yet) for one measurement."""
    root = tmp / name
    (root / "inbox").mkdir(parents=True)
    config = {
        "inbox": str(root / "inbox"),
        "cache_dir": str(tmp / "cache"),
        "clip": {"model": str(clip_dir), "device": "cpu", "offline": True},
        "ollama": {"host": ollama_url},
        "log": {"format": "json", "level": "warning"},
        "api": {"listen": "127.0.0.1:0"},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    view = view_for(load_config(path, {}))
    view.live.ctx.analyzer.load()
    return view


def measure(view: Any, data: bytes, count: int, backlog: list[Path] | None) -> dict[str, Any]:
    """API latencies (with the backlog worked meanwhile when given) and, idle, direct ones."""
    server = ApiServer(build_deps(view))
    server.start()
    out: dict[str, Any] = {}
    try:
        # Browsers and curl send with TCP_NODELAY; without it, Nagle's algorithm and delayed
        # ACKs add ~40 ms to every multipart POST (headers and body go out separately).
        nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        with httpx.Client(base_url=server.url, timeout=120, transport=nodelay) as client:
            api_latencies(client, data, 5)  # warm: connection, caches
            if backlog is None:
                api: list[float] = []
                direct: list[float] = []
                for _ in range(count):  # in turns, so drifting load hits both alike
                    api += api_latencies(client, data, 1)
                    direct.append(direct_once(view.live.ctx, data))
                out = {"api": summary(api), "direct": summary(direct)}
            else:
                with Backlog(view, backlog) as worked:
                    time.sleep(1.0)  # let the worker get going
                    out = {"api": summary(api_latencies(client, data, count))}
                    out["model_call_ms"] = round(worked.per_image_s() * 1000, 2)
                    out["folder_left"] = len(view.queue)
    finally:
        server.stop(10)
    return out


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    clip_dir = build_tiny_clip(tmp / "clip")
    data = make_samples(tmp / "samples")[0].read_bytes()
    backlog = write_images(tmp / "backlog-src", args.backlog)
    result: dict[str, Any] = {"requests": args.requests, "backlog": args.backlog}
    with FakeOllama() as fake:
        idle = measure(world(tmp, clip_dir, fake.url, "idle"), data, args.requests, None)
        result["a_idle"] = idle
        result["overhead_p50_ms"] = round(idle["api"]["p50_ms"] - idle["direct"]["p50_ms"], 2)
        busy_view = world(tmp, clip_dir, fake.url, "busy")
        busy = _moved(backlog, busy_view.config.inbox[0])
        result["b_backlog"] = measure(busy_view, data, args.requests, busy)
        fake.delay_s = args.model_delay
        slow_idle = measure(world(tmp, clip_dir, fake.url, "slow-idle"), data, args.requests, None)
        slow_view = world(tmp, clip_dir, fake.url, "slow")
        slow = _moved(busy, slow_view.config.inbox[0])
        result["c_slow_idle"] = slow_idle
        result["c_slow_backlog"] = measure(slow_view, data, args.requests, slow)
    b, c = result["b_backlog"], result["c_slow_backlog"]
    b_added = b["api"]["p50_ms"] - idle["api"]["p50_ms"]
    c_added = c["api"]["p50_ms"] - slow_idle["api"]["p50_ms"]
    result["b_added_p50_ms"] = round(b_added, 2)
    result["b_added_calls"] = round(b_added / max(b["model_call_ms"], 1e-6), 2)
    result["c_added_p50_ms"] = round(c_added, 2)
    result["c_added_calls"] = round(c_added / (args.model_delay * 1000), 2)
    return result


def _moved(images: list[Path], inbox: Path) -> list[Path]:
    """``images`` moved into ``inbox`` (a measurement's own inbox), sidecars left behind."""
    target = inbox / "backlog"
    target.mkdir(parents=True, exist_ok=True)
    return [image.rename(target / image.name) for image in images]


def report(r: dict[str, Any]) -> str:
    a, b, c0, c1 = r["a_idle"], r["b_backlog"], r["c_slow_idle"], r["c_slow_backlog"]

    def row(name: str, s: dict[str, float]) -> str:
        return f"{name:<46} {s['p50_ms']:>9.1f} {s['p95_ms']:>9.1f}"

    lines = [
        f"promptd API benchmark: {r['requests']} requests each, {r['backlog']}-image backlog",
        f"{'':<46} {'p50 ms':>9} {'p95 ms':>9}",
        row("(a) pipeline called directly, zero-latency model", a["direct"]),
        row("(a) POST /api/images/analyze, idle", a["api"]),
        row("(b) POST /api/images/analyze, backlog worked", b["api"]),
        row(f"(c) the same, {r['model_delay_s']:g} s model, idle", c0["api"]),
        row(f"(c) the same, {r['model_delay_s']:g} s model, backlog", c1["api"]),
        "",
        f"API overhead at p50: {r['overhead_p50_ms']:.1f} ms (goal < {GOALS['overhead_p50_ms']:g} ms)",
        f"backlog adds at p50: {r['b_added_p50_ms']:.1f} ms = {r['b_added_calls']:.2f} model calls "
        f"of {b['model_call_ms']:.1f} ms (goal < {GOALS['backlog_added_calls']:g}); "
        f"{b['folder_left']} folder images still queued",
        f"with a {r['model_delay_s']:g} s model: {r['c_added_p50_ms']:.1f} ms = "
        f"{r['c_added_calls']:.2f} model calls (goal < 1)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, save the numbers; 0 even when a goal is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench api", description=__doc__)
    parser.add_argument("--requests", type=int, default=100, help="requests per figure")
    parser.add_argument("--backlog", type=int, default=1000, help="folder images queued")
    parser.add_argument("--model-delay", type=float, default=0.05, help="model latency for (c)")
    args = parser.parse_args(argv)
    configure_logging("warning", "json")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="promptd-api-bench-") as tmp:
        result = run(args, Path(tmp))
    result["model_delay_s"] = args.model_delay
    result["environment"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "total_s": round(time.perf_counter() - started, 1),
    }
    result["goals_met"] = {
        "overhead": result["overhead_p50_ms"] < GOALS["overhead_p50_ms"],
        "backlog": result["b_added_calls"] < GOALS["backlog_added_calls"],
        "backlog_slow_model": result["c_added_calls"] < GOALS["backlog_added_calls"],
    }
    print(report(result))
    print(f"total {result['environment']['total_s']} s; written to {RESULTS}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
