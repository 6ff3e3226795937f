"""The LLM stage on a modelled 4 GB GPU: model loads, prefill and decode, arrival vs model order.

A real `promptd run` subprocess (tests/daemon_helpers.py's `Daemon`, as bench/daemon_bench.py
runs it, with the tiny CLIP) serves a burst of N images copied alternately into a `speed`
folder and a `quality` folder of its inbox (each with a `.promptd.yaml` saying `mode:`), so
the two modes' models (llama3.2, mistral) alternate. The fake Ollama runs the cost model of
tests/fake_cost.py with the `gpu-4gb` preset: one resident model (a switch costs a load), a
prompt cache per slot, prefill and decode per token, `--parallel` slots. Its times are a model
of the hardware, not a measurement of it, slept times ``--scale`` so the bench takes minutes;
the counts (loads, prefilled and decoded tokens) are exact for its token approximation.

Two runs, side by side: ``ollama.switch_after_s: 0`` (plain arrival order, today's) and the
default bound (the new model-aware order; ``--switch-after-s S`` writes S instead). The bound
is in the daemon's wall seconds, so at ``--scale`` 0.05 the default 30 s is 600 model seconds.
Each run's figures cover the burst only (the start-up preload and one warm-up image are left
out):

- loads, prefilled tokens, decoded tokens, wall time (first copy to the last .json's mtime);
- the limit: what the cost model charges for the unavoidable work (one load per distinct
  model, each prompt less the prefix it shares with the previous prompt for that model, i.e.
  a one-slot cache that is never lost, every decoded token), in model seconds and, times the
  scale, wall seconds; beside it, the prefill a cache holding every earlier prompt could reach;
- the share of each prompt identical to the previous request for the same model (the
  recorded requests' common token prefix), mean and 10th percentile.

Goals (issue 10): loads <= distinct models + switches the bound could have fired (a switch
away from a model with requests still to come, at least switch_after_s after the burst began
or the previous such switch: one per bound, however long images have waited);
prefilled within 20% of the limit's; wall time <= 1.05x the limit; prefix share >= 80%.

``ollama.switch_after_s`` and ``ollama.parallel`` are written only when the installed
settings have them (`OllamaSettings.model_fields`); otherwise the run says so and both runs
use the daemon's only order. Results are printed and written to bench/results/llm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.daemon_bench import json_files, percentile
from daemon.config.settings import OllamaSettings
from tests.daemon_helpers import Daemon, png_bytes, wait_until, write_images
from tests.fake_cost import GPU_4GB, Charge, CostModel, limit
from tests.fake_ollama import FakeOllama
from tests.tinyclip import build_tiny_clip

RESULTS = Path(__file__).parent / "results" / "llm.json"
GOALS = {"prefilled_ratio": 1.20, "wall_ratio": 1.05, "prefix_share": 0.80}
MODES = ("speed", "quality")


def default_switch_after() -> float:
    """The installed settings' default ``ollama.switch_after_s`` (the contract's 30 s if none)."""
    field = OllamaSettings.model_fields.get("switch_after_s")
    return float(field.default) if field is not None else 30.0


def settings_have(name: str) -> bool:
    """Whether the installed ``OllamaSettings`` has the field ``name``."""
    return name in OllamaSettings.model_fields


def write_config(
    folder: Path, clip_dir: Path, url: str, ollama: Mapping[str, Any]
) -> tuple[Path, Path]:
    """An inbox with a speed and a quality folder, and a config.yaml for it: (config, inbox)."""
    inbox = folder / "inbox"
    for mode in MODES:
        (inbox / mode).mkdir(parents=True)
        (inbox / mode / ".promptd.yaml").write_text(f"mode: {mode}\n", encoding="utf-8")
    config = {
        "inbox": str(inbox),
        "cache_dir": str(folder / "cache"),
        "clip": {"model": str(clip_dir), "device": "cpu", "offline": True},
        "ollama": {"host": url, **ollama},
        "log": {"format": "json", "level": "info"},
        "api": {"listen": "127.0.0.1:0"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path, inbox


def ollama_keys(switch_after_wall_s: float | None, parallel: int) -> tuple[dict[str, Any], str]:
    """The ollama keys this run writes (those the settings know), and a note on any left out."""
    keys: dict[str, Any] = {}
    missing = []
    for name, value in (("switch_after_s", switch_after_wall_s), ("parallel", parallel)):
        if not settings_have(name):
            missing.append(f"ollama.{name}")
        elif value is not None:  # None: the settings' default applies
            keys[name] = value
    note = (
        f"{' and '.join(missing)} not in this build's settings: not written, the daemon's "
        "built-in behaviour applies"
        if missing
        else ""
    )
    return keys, note


def burst(daemon: Daemon, sources: Sequence[Path], inbox: Path) -> tuple[float, float]:
    """Copy the images alternately into the speed and quality folders; (wall seconds to the
    last .json, monotonic time the last copy was done)."""
    started = time.time()
    for index, src in enumerate(sources):
        shutil.copyfile(src, inbox / MODES[index % 2] / src.name)
    dropped = time.monotonic()
    per_mode = {
        mode: sum(1 for i in range(len(sources)) if i % 2 == m) for m, mode in enumerate(MODES)
    }

    def done() -> bool:
        return not daemon.alive() or all(
            len([p for p in json_files(inbox / mode) if p.name.startswith("img")]) >= count
            for mode, count in per_mode.items()
        )

    wait_until(done, 1800, "the daemon to finish the burst", interval=0.05)
    assert daemon.alive(), daemon.tail()
    last = max(p.stat().st_mtime_ns for mode in MODES for p in json_files(inbox / mode)) / 1e9
    return last - started, dropped


def bounded_switches(
    charges: Sequence[Charge], burst_start: float, after_s: float
) -> tuple[int, int]:
    """(switches away from a model that still had requests to come; those of them at least
    ``after_s`` wall seconds after the burst began or the previous one: the ones a
    switch_after_s bound can explain, one per bound)."""
    left, could, since = 0, 0, burst_start
    for index in range(1, len(charges)):
        before, now = charges[index - 1].model, charges[index].model
        if before == now or all(c.model != before for c in charges[index + 1 :]):
            continue
        left += 1
        if charges[index].started - since >= after_s:
            could += 1
            since = charges[index].started
    return left, could


def busy_s(charges: Sequence[Charge], scale: float) -> float:
    """Wall seconds in which the modelled runner was loading or serving a request (the union of
    the requests' intervals, each from the start of the load it paid)."""
    spans = sorted((c.started - c.load_s * scale, c.ended) for c in charges)
    total, reach = 0.0, float("-inf")
    for start, end in spans:
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def prefix_shares(charges: Sequence[Charge]) -> list[float]:
    """For each request after a model's first, the share of its prompt tokens identical to
    (a common prefix with) the previous request for the same model, in arrival order."""
    last: dict[str, tuple[str, ...]] = {}
    shares = []
    for charge in charges:
        previous = last.get(charge.model)
        if previous is not None:
            same = 0
            for a, b in zip(previous, charge.tokens, strict=False):
                if a != b:
                    break
                same += 1
            shares.append(same / len(charge.tokens))
        last[charge.model] = charge.tokens
    return shares


def one_run(
    name: str, args: argparse.Namespace, tmp: Path, clip_dir: Path, sources: Sequence[Path],
    switch_after_wall_s: float | None,
) -> dict[str, Any]:  # fmt: skip
    """One daemon on one fresh fake with the cost model: the burst's figures."""
    folder = tmp / name
    folder.mkdir()
    cost = CostModel(GPU_4GB, slots=args.parallel, speed=args.scale)
    keys, note = ollama_keys(switch_after_wall_s, args.parallel)
    with FakeOllama(cost=cost) as fake:
        config, inbox = write_config(folder, clip_dir, fake.url, keys)
        daemon = Daemon(config, folder / "daemon.log")
        try:
            daemon.wait_ready(300)
            wait_until(lambda: daemon.events("scan_done"), 120, "the start-up scan")
            warm = inbox / "speed" / "warm.png"
            warm.write_bytes(png_bytes(99_999))
            wait_until(warm.with_suffix(".json").exists, 120, "the warm-up image")
            before, loads_before = len(cost.charges), cost.loads
            burst_start = time.monotonic()
            wall_s, _ = burst(daemon, sources, inbox)
        finally:
            daemon.stop()
    charges = sorted(cost.charges[before:], key=lambda c: c.started)
    loads = cost.loads - loads_before
    prefilled = sum(c.prefilled for c in charges)
    decoded = sum(c.decoded for c in charges)
    requests = [(c.model, c.tokens, c.decoded) for c in charges]
    bound = limit(requests, GPU_4GB)
    any_bound = limit(requests, GPU_4GB, reuse="any")
    after = switch_after_wall_s if switch_after_wall_s is not None else default_switch_after()
    left, could = bounded_switches(charges, burst_start, after)
    shares = prefix_shares(charges)
    return {
        "switch_after_s": after,
        "written": keys,
        "note": note,
        "requests": len(charges),
        "distinct_models": int(bound["loads"]),
        "loads": loads,
        "switches_with_work_left": left,
        "switches_bound_could_fire": could,
        "prefilled": prefilled,
        "decoded": decoded,
        "model_s": round(cost.seconds(loads, prefilled, decoded), 1),
        "wall_s": round(wall_s, 2),
        "llm_busy_s": round(busy_s(charges, args.scale), 2),
        "limit": {
            "prefilled": int(bound["prefilled"]),
            "decoded": int(bound["decoded"]),
            "model_s": round(bound["model_s"], 1),
            "wall_s": round(bound["model_s"] * args.scale, 2),
            "prefilled_any_earlier": int(any_bound["prefilled"]),
        },
        "prefix_share_mean": round(statistics.fmean(shares), 3) if shares else 0.0,
        "prefix_share_p10": round(percentile(shares, 10), 3) if shares else 0.0,
        "mean_prompt_tokens": round(statistics.fmean(c.prompt_tokens for c in charges), 1),
        "mean_decoded_tokens": round(statistics.fmean(c.decoded for c in charges), 1),
    }


def verdicts(run: Mapping[str, Any]) -> dict[str, bool]:
    """Whether each goal is met for one run."""
    lim = run["limit"]
    return {
        "loads": run["loads"] <= run["distinct_models"] + run["switches_bound_could_fire"],
        "prefilled": run["prefilled"] <= GOALS["prefilled_ratio"] * lim["prefilled"],
        "wall": run["wall_s"] <= GOALS["wall_ratio"] * lim["wall_s"],
        "prefix_share": run["prefix_share_mean"] >= GOALS["prefix_share"],
    }


def report(result: Mapping[str, Any]) -> str:
    """The printed table: one column per run, the limit and the ratio beside each figure."""
    runs = result["runs"]
    names = list(runs)

    def cell(run: Mapping[str, Any], value: float, bound: float, fmt: str) -> str:
        ratio = value / bound if bound else float("inf")
        return f"{value:{fmt}} / {bound:{fmt}} ({ratio:.2f}x)"

    rows: list[tuple[str, list[str], str]] = [
        ("model loads / distinct models", [f"{r['loads']} / {r['distinct_models']} (+{r['switches_bound_could_fire']} bound)" for r in runs.values()], "<= distinct + bound"),
        ("prefilled tokens / limit", [cell(r, r["prefilled"], r["limit"]["prefilled"], ",") for r in runs.values()], f"<= {GOALS['prefilled_ratio']:.2f}x"),
        ("decoded tokens / limit", [cell(r, r["decoded"], r["limit"]["decoded"], ",") for r in runs.values()], "-"),
        ("model time s / limit", [cell(r, r["model_s"], r["limit"]["model_s"], ".1f") for r in runs.values()], "-"),
        ("wall s / limit x scale", [cell(r, r["wall_s"], r["limit"]["wall_s"], ".2f") for r in runs.values()], f"<= {GOALS['wall_ratio']:.2f}x"),
        ("LLM idle s (wall - busy)", [f"{r['wall_s'] - r['llm_busy_s']:.2f} of {r['wall_s']:.2f}" for r in runs.values()], "-"),
        ("prefix share, mean / p10", [f"{r['prefix_share_mean']:.0%} / {r['prefix_share_p10']:.0%}" for r in runs.values()], f">= {GOALS['prefix_share']:.0%}"),
        ("goals met", [", ".join(k for k, v in verdicts(r).items() if v) or "none" for r in runs.values()], ""),
    ]  # fmt: skip
    env = result["environment"]
    width = max(34, *(len(c) for _, cells, _ in rows for c in cells)) + 2
    lines = [
        f"LLM stage: {result['images']}-image burst, speed/quality folders alternating; fake "
        f"Ollama cost model '{GPU_4GB.name}' (load {GPU_4GB.load_s} s, prefill "
        f"{GPU_4GB.prefill_tok_s:.0f} tok/s, decode {GPU_4GB.decode_tok_s:.0f} tok/s, "
        f"{result['parallel']} slot(s)), times slept x{result['scale']} (model s x scale = wall s); "
        f"{env['cpus']} CPUs",
        f"{'measure':<32}" + "".join(f"{n:<{width}}" for n in names) + "goal",
        *(f"{a:<32}" + "".join(f"{c:<{width}}" for c in cells) + g for a, cells, g in rows),
    ]
    for name, run in runs.items():
        lines.append(
            f"{name}: switch_after_s {run['switch_after_s']} s "
            f"({'written' if 'switch_after_s' in run['written'] else 'not written'}, "
            f"{run['switch_after_s'] / result['scale']:.0f} model s), "
            f"{run['requests']} requests, mean prompt {run['mean_prompt_tokens']} tokens, mean "
            f"answer {run['mean_decoded_tokens']} tokens, switches with work left "
            f"{run['switches_with_work_left']}, prefilled if every earlier prompt were "
            f"cached {run['limit']['prefilled_any_earlier']:,}"
            + (f"; NOTE: {run['note']}" if run["note"] else "")
        )
    lines.append(
        "The times are the cost model's (a model of the hardware, not a measurement); the "
        "counts are exact. Wall time includes the daemon's own work, not scaled."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both orders, print the table, save the numbers; 0 even when a goal is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench llm", description=__doc__)
    parser.add_argument("--images", type=int, default=200, help="burst size")
    parser.add_argument(
        "--scale", type=float, default=0.05, help="wall seconds slept per model second"
    )
    parser.add_argument("--parallel", type=int, default=1, help="slots (ollama.parallel)")
    parser.add_argument(
        "--switch-after-s",
        type=float,
        default=None,
        help="the new order's bound in wall seconds (unset: the settings' default)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="promptd-llm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        clip_dir = build_tiny_clip(tmp / "tiny-clip")
        sources = write_images(tmp / "sources", args.images)
        runs = {
            "arrival order": one_run("arrival", args, tmp, clip_dir, sources, 0.0),
            "model order": one_run("model", args, tmp, clip_dir, sources, args.switch_after_s),
        }
    result: dict[str, Any] = {
        "images": args.images,
        "scale": args.scale,
        "parallel": args.parallel,
        "switch_after_s": args.switch_after_s or default_switch_after(),
        "hardware": GPU_4GB.__dict__,
        "runs": runs,
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "total_s": round(time.perf_counter() - started, 1),
        },
    }
    result["goals_met"] = {name: verdicts(run) for name, run in runs.items()}
    print(report(result))
    print(f"total {result['environment']['total_s']} s; written to {RESULTS}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
