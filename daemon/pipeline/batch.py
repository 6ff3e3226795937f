"""Driving the stages: admit -> load -> analyze -> compose -> write, a few images at a time.

``prepare_batch`` admits and decodes (CPU only: the daemon runs it ahead of the GPU stages),
``finish_batch`` runs CLIP over the batch at once, then composes and writes each image;
``process_batch`` is both. The thin ``load``/``analyze``/``compose`` stage functions hand the
records to their implementations. One image's failure becomes its result, never the batch's;
nothing here starts a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import structlog

from daemon import sidecar
from daemon.config.rules import wants_clip_prompt
from daemon.errors import ImageError, PromptdError
from daemon.pipeline.admit import Admitted, admit
from daemon.pipeline.context import Context
from daemon.pipeline.load import read_image
from daemon.pipeline.stats import describe_stats
from daemon.pipeline.training import base_caption
from daemon.pipeline.write import elapsed_ms, write_error, write_ok
from daemon.records import (
    Analysis,
    Analyzed,
    ClipPrompt,
    Composition,
    EffectiveRule,
    LoadedImage,
    Result,
)

log = structlog.get_logger("promptd.pipeline")
_T = TypeVar("_T")


# --- load, analyze, compose, write ------------------------------------------------------


def load(admitted: Admitted, ctx: Context) -> LoadedImage:
    """Read, hash and decode the image under the configured limits (raises ImageError)."""
    return read_image(admitted.path, ctx.config.images)


def analyze(images: Sequence[LoadedImage], ctx: Context) -> tuple[list[Analysis], str | None]:
    """CLIP zero-shot for a batch; on failure, empty analyses and the reason."""
    seen, reason = analyze_embedded(images, ctx)
    return [s.analysis for s in seen], reason


def analyze_embedded(
    images: Sequence[LoadedImage], ctx: Context
) -> tuple[list[Analyzed], str | None]:
    """``analyze``, each analysis with the image embedding (kept for clip_prompt)."""
    if ctx.analyzer is None or not images:
        return [Analyzed({}) for _ in images], None
    try:
        return ctx.analyzer.analyze_embedded([img.image for img in images]), None
    except PromptdError as exc:
        log.warning("clip_unavailable", error=str(exc))
        return [Analyzed({}) for _ in images], f"CLIP unavailable: {exc.message}"


def compose(
    loaded: LoadedImage, analysis: Analysis, rule: EffectiveRule, ctx: Context
) -> Composition:
    """Ask the composer for a prompt in the rule's mode (falls back to `clip` by itself)."""
    return ctx.composer.compose(
        rule.settings.mode,
        rule.settings,
        analysis,
        describe_stats(loaded.stats),
        loaded.image,
    )


def interrogate(
    seen: Analyzed, composition: Composition, rule: EffectiveRule, ctx: Context
) -> ClipPrompt | None:
    """The CLIP-Interrogator-style prompt when the rule wants one (None when it does not)."""
    settings = rule.settings
    if not wants_clip_prompt(settings):
        return None
    if ctx.analyzer is None or seen.embedding is None:
        return ClipPrompt(None, "clip_prompt needs CLIP, which was unavailable")
    caption = base_caption(composition, seen.analysis, settings.language)
    try:
        return ClipPrompt(ctx.analyzer.clip_prompt(caption, seen.embedding))
    except PromptdError as exc:
        log.warning("clip_prompt_unavailable", error=str(exc))
        return ClipPrompt(None, f"clip_prompt unavailable: {exc}")


# --- driving the stages --------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A batch after admit and load: finished results so far, and the images still to do."""

    paths: tuple[Path, ...]
    results: dict[Path, Result]
    work: tuple[tuple[Admitted, LoadedImage, dict[str, float]], ...]


def prepare_batch(
    paths: Sequence[Path], ctx: Context, *, force: bool = False, redo_degraded: bool = True
) -> Prepared:
    """Admit and decode a batch (CPU only: the daemon runs this ahead of the GPU stages)."""
    results: dict[Path, Result] = {}
    work: list[tuple[Admitted, LoadedImage, dict[str, float]]] = []
    folders: dict[Path, sidecar.FolderIndex] = {}
    for path in paths:
        check = partial(admit, path, ctx, force=force, redo_degraded=redo_degraded, folders=folders)
        admitted = _guard(path, check)
        if isinstance(admitted, Result):
            results[path] = admitted
            continue
        timings: dict[str, float] = {}
        started = time.perf_counter()
        try:
            loaded = load(admitted, ctx)
        except ImageError as exc:
            timings["load"] = elapsed_ms(started)
            results[path] = _guard(path, partial(write_error, admitted, exc, timings))
            continue
        timings["load"] = elapsed_ms(started)
        work.append((admitted, loaded, timings))
    return Prepared(tuple(paths), results, tuple(work))


def finish_batch(
    prepared: Prepared,
    ctx: Context,
    *,
    should_write: Callable[[Path], bool] | None = None,
    on_image: Callable[[Path], None] | None = None,
) -> list[Result]:
    """CLIP over the batch at once, then compose and write each image; one log line each.

    ``should_write`` is asked just before an image's sidecars are written (a distributed
    worker checks it still holds the image's lock); False skips the write. ``on_image(path)``
    is called as each image's compose begins (every image before it in the batch is finished
    by then): the service's progress heartbeat.
    """
    results = dict(prepared.results)
    work = prepared.work
    started = time.perf_counter()
    analyses, clip_reason = analyze_embedded([loaded for _, loaded, _ in work], ctx)
    share = elapsed_ms(started) / max(len(work), 1)
    for (admitted, loaded, timings), seen in zip(work, analyses, strict=True):
        timings["analyze"] = share

        def finish(
            a: Admitted = admitted,
            img: LoadedImage = loaded,
            s: Analyzed = seen,
            t: dict[str, float] = timings,
        ) -> Result:
            if on_image is not None:
                on_image(a.path)
            begun = time.perf_counter()
            composition = compose(img, s.analysis, a.rule, ctx)
            t["compose"] = elapsed_ms(begun)
            t.update(composition.llm_timings)
            extra = interrogate(s, composition, a.rule, ctx)
            if extra is not None:
                t["clip_prompt"] = elapsed_ms(begun) - t["compose"]
            if should_write is not None and not should_write(a.path):
                return Result(a.path, "skipped", "lock lost before writing: another worker has it")
            return write_ok(a, img, s.analysis, composition, clip_reason, t, ctx, clip_prompt=extra)

        results[admitted.path] = _guard(admitted.path, finish)
    ordered = [results[p] for p in prepared.paths]
    for result in ordered:
        log_result(result)
    return ordered


def process_batch(
    paths: Sequence[Path],
    ctx: Context,
    *,
    force: bool = False,
    redo_degraded: bool = True,
    should_write: Callable[[Path], bool] | None = None,
) -> list[Result]:
    """Run every stage for a few paths; CLIP sees the decodable ones as one batch."""
    prepared = prepare_batch(paths, ctx, force=force, redo_degraded=redo_degraded)
    return finish_batch(prepared, ctx, should_write=should_write)


def _guard(path: Path, step: Callable[[], _T]) -> _T | Result:
    """One image's failure (a disk error, a bug) becomes its result, never the batch's."""
    try:
        return step()
    except PromptdError as exc:
        return Result(path, "failed" if exc.kind != "transient" else "retry", str(exc))
    except Exception as exc:  # a bug on one image must not stop the others
        log.exception("image_crashed", path=str(path))
        return Result(path, "failed", f"internal error: {type(exc).__name__}: {exc}")


def log_result(result: Result) -> None:
    """The one log line per image."""
    if result.outcome == "skipped":
        log.debug("image", path=str(result.path), outcome="skipped", reason=result.reason)
        return
    level = "info" if result.outcome in ("ok", "degraded") else "warning"
    getattr(log, level)(
        "image",
        path=str(result.path),
        outcome=result.outcome,
        mode=result.mode,
        reason=result.reason,
        timings_ms={k: round(v, 1) for k, v in result.timings_ms.items()},
    )
