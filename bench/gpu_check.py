"""CUDA checks for a small card: CLIP ViT-B/32 in fp16, and the GPU lock against an LLM stand-in.

Needs a CUDA device; without one it prints "no CUDA device: not run" and exits 0 (the tests
never import it). Run it as ``python -m bench gpu`` or ``python -m bench.gpu_check``.

1. CLIP ViT-B/32 with random weights but the real shape (transformers' CLIPConfig with the
   ViT-B/32 sizes, nothing downloaded), fp16 on the GPU: peak VRAM (allocated by torch, the
   model plus a batch of ``--batch`` images and the label texts; goal <= 0.5 GB) and ms per
   image, one image at a time against batches of ``--batch``.
2. The GPU lock (daemon/service/gpulock.py's GpuLock) under contention: a thread standing in
   for the LLM holds about ``--llm-gb`` GB of VRAM and keeps the GPU busy with fp16 matmuls,
   taking the lock for each "request", while a CLIP thread takes it for each batch. Each
   holder synchronises the device before it lets go, so its GPU work lies inside its turn;
   the turns are recorded and checked for overlap (goal: none) and out-of-memory errors
   (goal: none). ``--vram-gb`` (default 4) caps this process's share of a larger card, as on
   a 4 GB GPU. The same run without the lock (``exclusive=False``) is the control: it shows
   the check does see overlap when nothing prevents it.

``--cpu`` runs the same code on the CPU in fp32 (no memory figures) to check the script
itself on a machine without CUDA; its timings mean nothing. Results go to
bench/results/gpu.json. Exit status 1 when the lock lets CLIP and the stand-in overlap or
anything runs out of memory, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.service.gpulock import GpuLock

RESULTS = Path(__file__).parent / "results" / "gpu.json"
GOAL_PEAK_GB = 0.5
GB = 1024**3
LABELS = 200  # about the size of the label tables' prompt set


def clip_b32() -> Any:
    """A CLIPModel with ViT-B/32's shape and random weights (nothing downloaded)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=512,
    )
    return CLIPModel(config).eval()


def _features(output: Any) -> Any:
    """Image or text features from get_*_features (a tensor, or an output object in newer
    transformers releases)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise TypeError(f"unexpected CLIP output {type(output).__name__}")


class Clip:
    """The model on ``device`` with a fixed set of label embeddings, ready to score images."""

    def __init__(self, device: str, dtype: Any) -> None:
        import torch

        self.torch, self.device, self.dtype = torch, device, dtype
        self.model = clip_b32().to(device=device, dtype=dtype)
        with torch.inference_mode():
            ids = torch.randint(0, 49408, (LABELS, 77), device=device)
            text = _features(self.model.get_text_features(input_ids=ids))
            self.labels = torch.nn.functional.normalize(text, dim=-1)

    def images(self, count: int) -> Any:
        """``count`` random 224x224 images, already preprocessed."""
        return self.torch.randn(count, 3, 224, 224, device=self.device, dtype=self.dtype)

    def score(self, pixels: Any) -> Any:
        """Zero-shot scores of ``pixels`` against the labels (what the analyzer computes)."""
        with self.torch.inference_mode():
            image = _features(self.model.get_image_features(pixel_values=pixels))
            image = self.torch.nn.functional.normalize(image, dim=-1)
            return (100 * image @ self.labels.T).softmax(dim=-1)


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ms_per_image(clip: Clip, images: int, batch: int) -> float:
    """Milliseconds per image scoring ``images`` images in batches of ``batch`` (after one
    warm-up batch)."""
    pixels = clip.images(batch)
    clip.score(pixels)
    sync(clip.device)
    started = time.perf_counter()
    for _ in range(max(1, images // batch)):
        clip.score(pixels)
    sync(clip.device)
    return (time.perf_counter() - started) * 1000 / (max(1, images // batch) * batch)


def clip_figures(device: str, dtype: Any, batch: int, images: int) -> dict[str, Any]:
    """Part 1: peak VRAM of model + a batch + the labels, and ms per image both ways."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    clip = Clip(device, dtype)
    single = ms_per_image(clip, images, 1)
    batched = ms_per_image(clip, images, batch)
    result: dict[str, Any] = {
        "params_m": round(sum(p.numel() for p in clip.model.parameters()) / 1e6, 1),
        "ms_per_image_unbatched": round(single, 2),
        f"ms_per_image_batch{batch}": round(batched, 2),
        "batched_speedup": round(single / batched, 2) if batched else None,
    }
    if cuda:
        sync(device)
        result["peak_allocated_gb"] = round((torch.cuda.max_memory_allocated() - base) / GB, 3)
        result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / GB, 3)
    del clip
    if cuda:
        torch.cuda.empty_cache()
    return result


def _holder(
    lock: GpuLock, device: str, work: Callable[[], None], turns: list[tuple[float, float]],
    stop: threading.Event, errors: list[str],
) -> None:  # fmt: skip
    """Take ``lock`` for each turn of ``work`` until ``stop``; record each turn's interval."""
    import torch

    try:
        while not stop.is_set():
            with lock:
                started = time.perf_counter()
                work()
                sync(device)  # the turn's GPU work ends before the lock is let go
                turns.append((started, time.perf_counter()))
            time.sleep(0.001)  # let the other side in, as a real caller does between requests
    except torch.cuda.OutOfMemoryError as exc:
        errors.append(f"out of memory: {exc}")
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")


def overlaps(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> int:
    """How many pairs of intervals, one from each list, overlap in time."""
    count = 0
    for s1, e1 in a:
        count += sum(1 for s2, e2 in b if s1 < e2 and s2 < e1)
    return count


def contention(
    device: str, dtype: Any, *, exclusive: bool, seconds: float, llm_gb: float, batch: int
) -> dict[str, Any]:
    """Part 2: the LLM stand-in and CLIP taking turns through one GpuLock for ``seconds``."""
    import torch

    lock = GpuLock(exclusive=exclusive)
    errors: list[str] = []
    held = torch.empty(int(llm_gb * GB), dtype=torch.uint8, device=device)  # weights + KV cache
    side = 4096 if device.startswith("cuda") else 256
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)

    def llm_request() -> None:
        for _ in range(20):
            torch.mm(a, b)

    clip = Clip(device, dtype)
    pixels = clip.images(batch)

    def clip_batch() -> None:
        clip.score(pixels)

    llm_turns: list[tuple[float, float]] = []
    clip_turns: list[tuple[float, float]] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_holder, args=(lock, device, llm_request, llm_turns, stop, errors)),
        threading.Thread(target=_holder, args=(lock, device, clip_batch, clip_turns, stop, errors)),
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(60)
    busy = sum(e - s for s, e in llm_turns)
    result = {
        "exclusive": exclusive,
        "llm_gb_held": round(held.numel() / GB, 2),
        "llm_turns": len(llm_turns),
        "clip_turns": len(clip_turns),
        "overlapping_pairs": overlaps(llm_turns, clip_turns),
        "llm_busy_share": round(busy / seconds, 2),
        "errors": errors,
    }
    return result  # the tensors go with this frame; the caller empties the cache


def report(result: dict[str, Any]) -> str:
    """The printed table."""
    c = result["clip"]
    batch = result["batch"]
    rows = [
        ("CLIP ViT-B/32 parameters", f"{c['params_m']} M", ""),
        ("peak VRAM (model + batch + labels)",
         f"{c['peak_allocated_gb']:.3f} GB allocated, {c['peak_reserved_gb']:.3f} GB reserved"
         if "peak_allocated_gb" in c else "n/a (CPU)", f"<= {GOAL_PEAK_GB} GB"),
        ("ms per image, unbatched", f"{c['ms_per_image_unbatched']:.2f}", ""),
        (f"ms per image, batch {batch}", f"{c[f'ms_per_image_batch{batch}']:.2f} "
         f"({c['batched_speedup']}x faster)", ""),
    ]  # fmt: skip
    for run in result["contention"]:
        name = "with the lock" if run["exclusive"] else "no lock (control)"
        rows.append(
            (
                f"contention, {name}",
                f"{run['llm_turns']} LLM / {run['clip_turns']} CLIP turns, "
                f"{run['overlapping_pairs']} overlapping, {len(run['errors'])} errors, "
                f"LLM busy {run['llm_busy_share']:.0%}",
                "0 overlapping, 0 errors" if run["exclusive"] else "(overlap expected)",
            )
        )
    cap = result["vram_cap_gb"]
    lines = [f"GPU check on {result['device_name']}" + (f" (capped at {cap} GB)" if cap else "")]
    lines += [f"{a:<38}{b:<70}{g}" for a, b, g in rows]
    for run in result["contention"]:
        lines += [f"  error: {e}" for e in run["errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both parts on the CUDA device (or on the CPU with --cpu); print and save."""
    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__)
    parser.add_argument("--batch", type=int, default=8, help="CLIP batch size (clip.batch_size)")
    parser.add_argument("--images", type=int, default=64, help="images timed per figure")
    parser.add_argument("--llm-gb", type=float, default=3.0, help="VRAM the LLM stand-in holds")
    parser.add_argument("--vram-gb", type=float, default=4.0, help="cap this process's VRAM")
    parser.add_argument("--seconds", type=float, default=5.0, help="each contention run")
    parser.add_argument("--cpu", action="store_true", help="check the script on the CPU")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch is not installed: not run")
        return 0
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: not run (bench/gpu_check.py needs one; --cpu checks the script)")
        return 0
    device, dtype = ("cpu", torch.float32) if args.cpu else ("cuda", torch.float16)
    result: dict[str, Any] = {"batch": args.batch, "vram_cap_gb": None, "device_name": "CPU"}
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        result["device_name"] = torch.cuda.get_device_name(0)
        result["total_gb"] = round(total / GB, 1)
        if args.vram_gb * GB < total:
            torch.cuda.set_per_process_memory_fraction(args.vram_gb * GB / total)
            result["vram_cap_gb"] = args.vram_gb
    llm_gb = args.llm_gb if device == "cuda" else min(args.llm_gb, 0.1)
    result["clip"] = clip_figures(device, dtype, args.batch, args.images)
    result["contention"] = []
    for exclusive in (True, False):
        result["contention"].append(
            contention(device, dtype, exclusive=exclusive, seconds=args.seconds, llm_gb=llm_gb,
                       batch=args.batch)
        )  # fmt: skip
        if device == "cuda":
            torch.cuda.empty_cache()
    print(report(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {RESULTS}")
    locked = result["contention"][0]
    failed = locked["overlapping_pairs"] > 0 or any(r["errors"] for r in result["contention"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
