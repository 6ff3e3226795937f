"""Run promptd's benchmarks: ``python -m bench [NAME|all] [options for the bench]``.

Each bench is a module with ``main(argv: list[str]) -> int``; add new ones to BENCHES.
Options after the bench name go to that bench (``python -m bench clip --images 8``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHES: dict[str, str] = {
    "clip": "bench.clip_bench",  # seed 000's CLIP calls vs ClipAnalyzer, unbatched and batched
    "daemon": "bench.daemon_bench",  # promptd run vs the bare pipeline, latency, scan, memory
    "distributed": "bench.distributed_bench",  # 1, 2, 4 workers through Redis; broker's cost
    "api": "bench.api_bench",  # POST /api/images/analyze vs the pipeline, idle and with a backlog
    "training": "bench.training_bench",  # clip_prompt vs the plain CLIP stage; manifest rebuilds
    "hostile": "bench.hostile_bench",  # each class of hostile input vs a plain image: time, RSS
    "llm": "bench.llm_bench",  # modelled 4 GB GPU: loads, prefill, decode; arrival vs model order
    "gpu": "bench.gpu_check",  # CUDA only: CLIP B/32 fp16 VRAM and speed, the GPU lock vs an LLM
}


def main(argv: list[str] | None = None) -> int:
    """Run the named bench, or every bench in turn; returns the worst exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", nargs="?", default="all", choices=[*BENCHES, "all"])
    args, rest = parser.parse_known_args(argv)
    names = list(BENCHES) if args.name == "all" else [args.name]
    status = 0
    for name in names:
        module = importlib.import_module(BENCHES[name])
        status = max(status, int(module.main(rest)))
    return status


if __name__ == "__main__":
    sys.exit(main())
