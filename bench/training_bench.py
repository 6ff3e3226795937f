"""Training sets: what clip_prompt costs per image, and how fast a folder's manifests rebuild.

(a) clip_prompt against the plain CLIP stage, on a randomly initialised CLIP of the real
    ViT-B/32 shape (tests/tinyclip.py with real_shape=True) with ``--phrases`` phrases in the
    vocabularies (default 20,000). The phrases are combinations of two to four words the
    model's hand-made tokenizer knows as single tokens, so they are as many tokens long as
    real phrases are under CLIP's BPE. Per image, taking turns: the plain stage
    (``analyze_embedded([image])``: preprocessing, one vision forward, the label tables) and
    ``clip_prompt`` on the embedding it returned (the matrix product, the classic picks and the
    chain). Medians; the ratio is (plain + clip_prompt) / plain, goal < 1.5x once the phrase
    embeddings are cached. The one-off embedding of the phrases and the load from the cache
    are timed too, and the classic picks alone (chain_steps 0) for reference.
(b) the manifests of one folder of ``--images`` images (default 10,000, in subfolders of
    1,000), each with the sidecars the pipeline wrote for a template image: a cold rebuild
    (every record read) and a warm one after one caption changed (what the daemon does after
    the first), both writing metadata.jsonl and metadata_kohya.json. Goal: < 1 s.

Results are printed and written to bench/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml

from bench.clip_bench import make_images
from bench.daemon_bench import build_fresh_tree
from daemon.config import ClipSettings, load_config
from daemon.config.rules import RuleResolver
from daemon.dataset.keeper import ManifestKeeper
from daemon.logs import configure_logging
from daemon.pipeline.analyze.clip import ClipAnalyzer
from daemon.pipeline.backends import build_context
from tests.tinyclip import build_tiny_clip, default_words

RESULTS = Path(__file__).parent / "results" / "training.json"
GOALS = {"clip_prompt_ratio": 1.5, "manifest_s": 1.0}
TABLE_SHARE = {"mediums": 0.05, "movements": 0.05, "lighting": 0.05, "camera": 0.05}
CAPTION = "a woman in a red coat on a city street at night"


def phrases(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct phrases of two to four known words, in a fixed order."""
    words = default_words()
    rng = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < count:
        found.setdefault(" ".join(rng.sample(words, rng.randint(2, 4))), None)
    return list(found)


def vocabulary_files(folder: Path, count: int) -> dict[str, str]:
    """The five tables, ``count`` phrases in all (flavours the most), as files."""
    folder.mkdir(parents=True)
    every = phrases(count)
    files, start = {}, 0
    for name in (*TABLE_SHARE, "flavors"):
        size = int(count * TABLE_SHARE[name]) if name in TABLE_SHARE else count - start
        path = folder / f"{name}.txt"
        path.write_text("\n".join(every[start : start + size]) + "\n", encoding="utf-8")
        files[name], start = str(path), start + size
    return files


def timed_ms(run: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = run()
    return (time.perf_counter() - started) * 1000, value


def clip_prompt_costs(
    folder: Path, count: int, images: int, chain: dict[str, int]
) -> dict[str, Any]:
    """(a): the one-off costs, then plain stage and clip_prompt per image, in turns."""
    model = build_tiny_clip(folder / "clip-b32", real_shape=True)
    settings = ClipSettings(
        model=str(model),
        device="cpu",
        offline=True,
        vocabularies=vocabulary_files(folder / "vocab", count),
        **chain,
    )
    cache = folder / "cache"
    pictures = make_images(images)
    first = ClipAnalyzer(settings, cache)
    first.load()
    (seen,) = first.analyze_embedded(pictures[:1])
    assert seen.embedding is not None
    build_ms, _ = timed_ms(lambda: first.clip_prompt(CAPTION, seen.embedding))
    analyzer = ClipAnalyzer(settings, cache)  # a restart: the phrase embeddings come from disk
    analyzer.load()
    load_ms, _ = timed_ms(lambda: analyzer.clip_prompt(CAPTION, seen.embedding))
    assert analyzer.interrogator is not None and analyzer.interrogator.tables_computed == 0
    classic = ClipAnalyzer(settings.model_copy(update={"chain_steps": 0}), cache)
    classic.load()
    classic.clip_prompt(CAPTION, seen.embedding)
    plain, full, picks, tokens, forwards = [], [], [], [], []
    for image in pictures:
        ms, (looked,) = timed_ms(lambda image=image: analyzer.analyze_embedded([image]))
        plain.append(ms)
        before = analyzer.interrogator.text_forwards
        ms, prompt = timed_ms(lambda e=looked.embedding: analyzer.clip_prompt(CAPTION, e))
        full.append(ms)
        forwards.append(analyzer.interrogator.text_forwards - before)
        tokens.append(analyzer.count_tokens(prompt))
        picks.append(timed_ms(lambda e=looked.embedding: classic.clip_prompt(CAPTION, e))[0])
    batched_ms, _ = timed_ms(lambda: analyzer.analyze_embedded(pictures))
    median = {
        name: statistics.median(v)
        for name, v in (("plain", plain), ("full", full), ("classic", picks))
    }
    batched = batched_ms / len(pictures)
    return {
        "phrases": count,
        "images": len(pictures),
        "chain": [settings.chain_steps, settings.chain_width],
        "one_off_embedding_s": round(build_ms / 1000, 1),
        "load_from_cache_ms": round(load_ms, 1),
        "ms_per_image": {
            "plain_stage": round(median["plain"], 1),
            "plain_stage_batched": round(batched, 1),
            "clip_prompt": round(median["full"], 1),
            "clip_prompt_classic_only": round(median["classic"], 1),
        },
        "ratio": round((median["plain"] + median["full"]) / median["plain"], 2),
        "ratio_batched": round((batched + median["full"]) / batched, 2),
        "ratio_classic_only": round((median["plain"] + median["classic"]) / median["plain"], 2),
        "text_forwards_per_image": max(forwards),
        "most_tokens": max(tokens),
        "example": prompt,
    }


def manifest_costs(folder: Path, clip_dir: Path, count: int) -> dict[str, Any]:
    """(b): a cold and a warm rebuild of one folder's two manifests."""
    inbox = folder / "inbox"
    dataset = inbox / "set"
    dataset.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "inbox": str(inbox),
                "cache_dir": str(folder / "cache"),
                "clip": {"model": str(clip_dir), "device": "cpu", "offline": True},
                "log": {"level": "warning", "format": "json"},
                "defaults": {"mode": "clip"},
            }
        ),
        encoding="utf-8",
    )
    config = load_config(path, os.environ)
    build_fresh_tree(dataset, build_context(config), count, 1000)
    (dataset / ".promptd.yaml").write_text("manifests: [hf, kohya]\n", encoding="utf-8")
    rules = RuleResolver(config)
    keeper = ManifestKeeper(lambda: config, lambda: rules)
    cold_ms, _ = timed_ms(lambda: keeper.rebuild(dataset, ("hf", "kohya")))
    lines = (dataset / "metadata.jsonl").read_text("utf-8").count("\n")
    edited = next(dataset.glob("shoot0000/*.txt"))
    edited.write_text("an edited caption\n", encoding="utf-8")
    warm = [timed_ms(lambda: keeper.rebuild(dataset, ("hf", "kohya")))[0] for _ in range(3)]
    assert "an edited caption" in (dataset / "metadata.jsonl").read_text("utf-8")
    return {
        "images": count,
        "listed": lines,
        "cold_s": round(cold_ms / 1000, 3),
        "warm_s": round(statistics.median(warm) / 1000, 3),
        "bytes": {
            "metadata.jsonl": (dataset / "metadata.jsonl").stat().st_size,
            "metadata_kohya.json": (dataset / "metadata_kohya.json").stat().st_size,
        },
    }


def report(result: Mapping[str, Any]) -> str:
    """The printed table."""
    a, b = result["clip_prompt"], result["manifests"]
    ms = a["ms_per_image"]
    met = "met" if a["ratio"] < GOALS["clip_prompt_ratio"] else "NOT met"
    lines = [
        f"clip_prompt: ViT-B/32 shape (random weights), {a['phrases']:,} phrases, {a['images']} "
        f"images, cpu, {result['threads']} threads, chain steps/width {a['chain'][0]}/{a['chain'][1]}",
        f"  one-off phrase embedding: {a['one_off_embedding_s']} s; later starts load them in "
        f"{a['load_from_cache_ms']:.0f} ms",
        f"  plain CLIP stage (1 vision fwd)     {ms['plain_stage']:>8.1f} ms/image"
        f"   (batches of 8: {ms['plain_stage_batched']:.1f})",
        f"  + clip_prompt (classic + chain)     {ms['clip_prompt']:>8.1f} ms/image"
        f"   -> {a['ratio']:.2f}x the plain stage (batched: {a['ratio_batched']:.2f}x)",
        f"  + classic picks only (no chain)     {ms['clip_prompt_classic_only']:>8.1f} ms/image"
        f"   -> {a['ratio_classic_only']:.2f}x",
        f"  text forwards per image <= {a['text_forwards_per_image']}, longest prompt "
        f"{a['most_tokens']} tokens (limit 75)",
        f"  goal (< {GOALS['clip_prompt_ratio']}x once cached): {met} ({a['ratio']:.2f}x)",
        f"manifests: {b['images']:,} images ({b['listed']:,} listed), hf + kohya: cold "
        f"{b['cold_s']:.3f} s, warm {b['warm_s']:.3f} s "
        f"(goal < {GOALS['manifest_s']:.0f} s: {'met' if b['cold_s'] < GOALS['manifest_s'] else 'NOT met'} cold, "
        f"{'met' if b['warm_s'] < GOALS['manifest_s'] else 'NOT met'} warm)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both parts in a temp folder, print and save the numbers."""
    parser = argparse.ArgumentParser(prog="python -m bench training", description=__doc__)
    parser.add_argument("--phrases", type=int, default=20_000, help="vocabulary size (20,000)")
    parser.add_argument("--images", type=int, default=10_000, help="manifest folder size")
    parser.add_argument("--clip-images", type=int, default=8, help="images for clip_prompt")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chain-steps", type=int, help="clip.chain_steps (default: promptd's)")
    parser.add_argument("--chain-width", type=int, help="clip.chain_width (default: promptd's)")
    args = parser.parse_args(argv)
    chain = {
        key: value
        for key, value in (("chain_steps", args.chain_steps), ("chain_width", args.chain_width))
        if value is not None
    }
    torch.set_num_threads(args.threads)
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory(prefix="promptd-bench-") as tmp:
        root = Path(tmp)
        result: dict[str, Any] = {"threads": torch.get_num_threads()}
        result["clip_prompt"] = clip_prompt_costs(root / "a", args.phrases, args.clip_images, chain)
        result["manifests"] = manifest_costs(root / "b", root / "a" / "clip-b32", args.images)
    result["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print(report(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {RESULTS}")
    return 0
