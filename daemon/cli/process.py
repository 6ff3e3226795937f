"""`promptd process`: images or folders once, with a progress bar, then a summary line."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.cli.common import EXIT_FAILED, EXIT_OK, load
from daemon.config import Config
from daemon.logs import configure_logging
from daemon.records import Result

if TYPE_CHECKING:
    from daemon.config.rules import RuleResolver

_Advance = Callable[[int], object]


def cmd_process(args: argparse.Namespace) -> int:
    from daemon.pipeline import discover, process_batch
    from daemon.pipeline.backends import build_context
    from daemon.pipeline.order import by_model

    config = load(args)
    configure_logging(config.log.level, config.log.format)
    ctx = build_context(config, mode_override=args.mode)
    missing = [p for p in args.paths if not p.exists() and not p.is_symlink()]
    for path in missing:
        print(f"promptd: {path}: no such file or folder", file=sys.stderr)

    def on_symlink(link: Path) -> None:
        print(
            f"promptd: {link}: a symbolic link, not followed (copy the image in)", file=sys.stderr
        )

    existing = [p for p in args.paths if p.exists() or p.is_symlink()]
    paths = by_model([p.resolve() for p in discover(existing, config, on_symlink)], ctx)
    show_bar = not args.no_progress and sys.stderr.isatty()
    started = time.perf_counter()
    results: list[Result] = []
    batch = config.clip.batch_size
    with _progress(len(paths), show_bar) as advance:
        for i in range(0, len(paths), batch):
            chunk = process_batch(paths[i : i + batch], ctx, force=args.force)
            results.extend(chunk)
            advance(len(chunk))
    _update_manifests(config, ctx.rules, results)
    print(summarize(results, time.perf_counter() - started))
    failed = {"error", "failed", "held", "retry"}
    return EXIT_FAILED if missing or any(r.outcome in failed for r in results) else EXIT_OK


def _update_manifests(config: Config, rules: RuleResolver, results: Sequence[Result]) -> None:
    """Rewrite the manifests of the folders (rule key ``manifests``) the results fall under."""
    from daemon.dataset.keeper import ManifestKeeper

    keeper = ManifestKeeper(lambda: config, lambda: rules)
    for result in results:
        keeper.note(result.path)
    keeper.flush_all()


def summarize(results: Sequence[Result], seconds: float) -> str:
    """One line: counts per outcome, images per second (skipped images excluded), and when
    Ollama answered, its model loads and tokens per second (output, prompt)."""
    from daemon.service.llmtime import total

    counts = Counter(r.outcome for r in results)
    worked = len(results) - counts["skipped"]
    rate = worked / seconds if seconds > 0 else 0.0
    failed = counts["error"] + counts["failed"] + counts["retry"]
    parts = [
        f"{len(results)} images: {counts['ok']} ok",
        f"{counts['degraded']} degraded",
        f"{counts['skipped']} skipped",
        f"{failed} failed",
    ]
    if counts["held"]:
        parts.append(f"{counts['held']} held by invalid rules")
    line = ", ".join(parts) + f" in {seconds:.1f} s ({rate:.2f} images/s)"
    llm = total(r.timings_ms for r in results)
    return line + (f"; LLM: {llm.describe()}" if llm.answers else "")


class _progress:
    """A tqdm bar on a terminal that keeps log lines readable; a no-op otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled

    def __enter__(self) -> _Advance:
        if not self.enabled:
            return lambda n: None
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        self._bar = tqdm(total=self.total, unit="img", file=sys.stderr)
        bar = self._bar

        def advance(n: int) -> object:
            return bar.update(n)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.close()
            self._redirect.__exit__(None, None, None)
