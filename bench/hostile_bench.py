"""Hostile input against a plain image: the worst time per image and the peak memory, per class.

Each class of hostile input from issue 6 runs in its own child process (so its peak RSS is
its own): a fresh inbox, the tiny CLIP (tests/tinyclip.py, one torch thread) and the fake
Ollama server (tests/fake_ollama.py, speed mode, no delay) in a process of its own, as a
real Ollama is, so neither its CPU nor its memory is counted; ``process_batch`` over one
image at a time after one warm-up image that is not counted. Classes:

- plain: a small PNG, the baseline (the fake's answer is about 60 tokens);
- long_answer: not hostile, for scale: a legitimate answer that uses its whole num_predict
  (about 400 streamed chunks), which is what reading any capped answer costs at most;
- rule_bomb: images under the issue's 361-byte "billion laughs" .promptd.yaml (held);
- hostile_text: ESC/ANSI, NUL, BEL, CR, U+202E, zero-width, <think>, fences in every field;
- huge_answer: a 200 KB schema-valid answer (num_predict ignored);
- endless_answer: a streamed answer that never ends until the client stops reading;
- ignore_schema: valid JSON that ignores the schema;
- non_utf8_name: a Latin-1 file name (b"caf\\xe9.png");
- long_name: a 251-byte name under naming: filename (stem fallback) and a 255-byte one (refused);
- symlink: a link to an image outside the inbox (skipped, never read);
- bad_image: a decompression bomb (header 20000x20000) and truncated JPEG/PNG files.

Goal: no class above 5x the plain image's worst time or 200 MB above its peak. Results are
printed as a table and written to bench/results/hostile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "hostile.json"
CLASSES = (
    "plain",
    "long_answer",
    "rule_bomb",
    "hostile_text",
    "huge_answer",
    "endless_answer",
    "ignore_schema",
    "non_utf8_name",
    "long_name",
    "symlink",
    "bad_image",
)
GOAL_TIME_RATIO = 5.0
GOAL_EXTRA_MB = 200.0


# --- in the child --------------------------------------------------------------------------


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _switches(kind: str) -> dict[str, Any]:
    """The fake server's hostile switches for one class."""
    return {
        "long_answer": {"huge_answer_bytes": 2400},  # ~400 chunks: within num_predict
        "hostile_text": {"hostile_text": True},
        "huge_answer": {"huge_answer_bytes": 200 * 1024},
        "endless_answer": {"endless": True},
        "ignore_schema": {"ignore_schema": True},
    }.get(kind, {})


def serve(switches: dict[str, Any]) -> None:
    """Run a fake Ollama with ``switches`` until stdin closes; print its URL first."""
    from tests.fake_ollama import FakeOllama

    with FakeOllama() as fake:
        for name, value in switches.items():
            setattr(fake, name, value)
        print(fake.url, flush=True)
        sys.stdin.read()


def _images(kind: str, inbox: Path, count: int) -> list[Path]:
    """The images of one class (and whatever file it needs)."""
    from tests.daemon_helpers import png_bytes, write_images
    from tests.images import make_bad_images
    from tests.test_hostile_yaml import laughs

    if kind in ("plain", *(k for k in CLASSES if _switches(k))):
        return write_images(inbox / kind, count, prefix=kind)
    if kind == "rule_bomb":
        (inbox / "bomb").mkdir()
        (inbox / "bomb" / ".promptd.yaml").write_text(laughs(9), encoding="utf-8")
        return write_images(inbox / "bomb", count, prefix="bombed")
    if kind == "non_utf8_name":
        folder = inbox / kind
        folder.mkdir()
        paths = [
            Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9%d.png" % i)) for i in range(count)
        ]
        for index, path in enumerate(paths):
            path.write_bytes(png_bytes(index))
        return paths
    if kind == "long_name":
        folder = inbox / kind
        folder.mkdir()
        (folder / ".promptd.yaml").write_text("naming: filename\n", encoding="utf-8")
        paths = []
        for index in range(count):
            stem = f"{index:03d}" + ("x" * (244 if index % 2 else 248))  # 251 or 255 bytes
            paths.append(folder / f"{stem}.png")
            paths[-1].write_bytes(png_bytes(index))
        return paths
    if kind == "symlink":
        outside = write_images(inbox.parent / "outside", count, prefix="secret")
        (inbox / kind).mkdir()
        links = [inbox / kind / f"link{i}.png" for i in range(count)]
        for link, target in zip(links, outside, strict=True):
            link.symlink_to(target)
        return links
    if kind == "bad_image":
        make_bad_images(inbox / kind)
        names = ("bomb.png", "truncated.jpg", "truncated.png")
        return [inbox / kind / name for name in names]
    raise ValueError(kind)


def child(kind: str, clip_dir: Path, count: int) -> dict[str, Any]:
    """Measure one class in this process; returns worst/median ms, outcomes and peak MB."""
    import torch
    import yaml

    from daemon.config import load_config
    from daemon.logs import configure_logging
    from daemon.pipeline import process_batch
    from daemon.pipeline.backends import build_context
    from tests.daemon_helpers import write_images

    torch.set_num_threads(1)  # one thread: less at the mercy of other work on the machine
    configure_logging("error", "json")
    root = Path(tempfile.mkdtemp(prefix=f"hostile-{kind}-"))
    inbox = root / "inbox"
    inbox.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.hostile_bench", "--serve", json.dumps(_switches(kind))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None and server.stdin is not None
    url = server.stdout.readline().strip()
    try:
        config = {
            "inbox": str(inbox),
            "cache_dir": str(root / "cache"),
            "clip": {"model": str(clip_dir), "device": "cpu", "offline": True},
            "ollama": {"host": url, "retries": 0, "backoff_s": 0.0},
            "log": {"format": "json", "level": "error"},
        }
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        ctx = build_context(load_config(path, {"HOME": str(root)}))
        process_batch(write_images(inbox / "warm-up", 1, prefix="warm"), ctx)
        images = _images(kind, inbox, count)
        times, outcomes = [], []
        for image in images:
            started = time.perf_counter()
            (result,) = process_batch([image], ctx)
            times.append((time.perf_counter() - started) * 1000)
            outcomes.append(result.outcome)
    finally:
        server.stdin.close()
        server.wait(30)
    times.sort()
    return {
        "class": kind,
        "images": len(images),
        "worst_ms": round(times[-1], 1),
        "median_ms": round(times[len(times) // 2], 1),
        "outcomes": sorted(set(outcomes)),
        "peak_mb": round(_peak_mb(), 1),
    }


# --- in the parent ---------------------------------------------------------------------------


def run_child(kind: str, clip_dir: Path, count: int) -> dict[str, Any]:
    """One class in a fresh interpreter; its JSON report."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.hostile_bench", "--child", kind, "--clip", str(clip_dir),
         "--images", str(count)],
        capture_output=True, text=True, timeout=600, check=False,
        cwd=Path(__file__).parent.parent, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"class {kind} failed:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def table(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table, ratios against the plain image."""
    plain = next(row for row in rows if row["class"] == "plain")
    lines = [
        f"{'class':<15} {'images':>6} {'median ms':>9} {'x plain':>8} {'worst ms':>9} "
        f"{'x plain':>8} {'peak MB':>8} {'+MB':>7}  goal  outcomes",
    ]
    for row in rows:
        ratio = row["worst_ms"] / plain["worst_ms"]
        typical = row["median_ms"] / plain["median_ms"]
        row["median_ratio"] = round(typical, 2)
        extra = row["peak_mb"] - plain["peak_mb"]
        row["time_ratio"], row["extra_mb"] = round(ratio, 2), round(extra, 1)
        row["goal_met"] = ratio <= GOAL_TIME_RATIO and extra <= GOAL_EXTRA_MB
        lines.append(
            f"{row['class']:<15} {row['images']:>6} {row['median_ms']:>9.1f} {typical:>7.2f}x "
            f"{row['worst_ms']:>9.1f} {ratio:>7.2f}x "
            f"{row['peak_mb']:>8.1f} {extra:>+7.1f}  {'ok' if row['goal_met'] else 'MISS':<4}  "
            f"{', '.join(row['outcomes'])}"
        )
    lines.append(
        f"goal: worst time at most {GOAL_TIME_RATIO:g}x the plain image's, peak at most "
        f"+{GOAL_EXTRA_MB:g} MB (median ratios shown too: worst times are noisy)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench hostile [--images N] [--only CLASS ...]``; the table marks each goal."""
    parser = argparse.ArgumentParser(prog="python -m bench hostile", description=__doc__)
    parser.add_argument("--images", type=int, default=6, help="images per class (default 6)")
    parser.add_argument("--only", nargs="*", choices=CLASSES, help="just these classes")
    parser.add_argument("--child", choices=CLASSES, help=argparse.SUPPRESS)
    parser.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(json.loads(args.serve))
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.clip, args.images)))
        return 0
    from tests.tinyclip import build_tiny_clip

    started = time.perf_counter()
    kinds = ["plain", *[k for k in (args.only or CLASSES) if k != "plain"]]
    with tempfile.TemporaryDirectory(prefix="hostile-clip-") as folder:
        clip_dir = build_tiny_clip(Path(folder))
        rows = [run_child(kind, clip_dir, args.images) for kind in kinds]
    print("hostile input vs a plain image (worst time per image, peak RSS per class)")
    print(table(rows))
    total = round(time.perf_counter() - started, 1)
    print(f"total {total} s; written to {RESULTS}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    environment = {"python": platform.python_version(), "platform": platform.platform(),
                   "cpus": os.cpu_count(), "total_s": total}  # fmt: skip
    RESULTS.write_text(json.dumps({"rows": rows, "environment": environment}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
