"""Driving the stages: admit -> load -> analyze -> compose -> write, a few images at a time.

``prepare_batch`` admits and decodes (CPU only: the daemon runs it ahead of the GPU stages),
``analyze_prepared`` runs CLIP over the batch at once (the daemon may run it ahead too),
``finish_batch`` runs CLIP unless that was done, then composes and writes each image (the
compose requests may be run several at a time by the caller's ``compose_all``);
``process_batch`` is all of them. The thin ``load``/``analyze``/``compose`` stage functions hand the
records to their implementations. One image's failure becomes its result, never the batch's;
nothing here starts a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
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
    """A batch after admit and load: finished results so far, and the images still to do;
    after ``analyze_prepared`` also CLIP's analyses of them (``seen``)."""

    paths: tuple[Path, ...]
    results: dict[Path, Result]
    work: tuple[tuple[Admitted, LoadedImage, dict[str, float]], ...]
    seen: tuple[Analyzed, ...] | None = None
    clip_reason: str | None = None
    clip_ms: float = 0.0  # per image


ComposeStep = Callable[[], Composition | Result]
ComposeAll = Callable[[Sequence[ComposeStep]], list[Composition | Result]]


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


def analyze_prepared(prepared: Prepared, ctx: Context) -> Prepared:
    """``prepared`` with CLIP's analyses of its images (one batched pass)."""
    started = time.perf_counter()
    seen, reason = analyze_embedded([loaded for _, loaded, _ in prepared.work], ctx)
    share = elapsed_ms(started) / max(len(prepared.work), 1)
    return replace(prepared, seen=tuple(seen), clip_reason=reason, clip_ms=share)


def finish_batch(
    prepared: Prepared,
    ctx: Context,
    *,
    should_write: Callable[[Path], bool] | None = None,
    on_image: Callable[[Path], None] | None = None,
    compose_all: ComposeAll | None = None,
) -> list[Result]:
    """CLIP over the batch at once (unless done), then compose and write each image; one
    log line each.

    ``should_write`` is asked just before an image's sidecars are written (a distributed
    worker checks it still holds the image's lock); False skips the write. ``on_image(path)``
    is called as each image's compose begins: the service's progress heartbeat. Without
    ``compose_all`` the images are composed one after another, each written on a writer
    thread while the next is composed; with it, ``compose_all`` runs the batch's compose
    steps (several at a time, say) and returns their outcomes in order, then each is written.
    Either way every image is written before this returns.
    """
    results = dict(prepared.results)
    if prepared.seen is None:
        prepared = analyze_prepared(prepared, ctx)
    items = list(zip(prepared.work, prepared.seen or (), strict=True))
    for (_, _, timings), _ in items:
        timings["analyze"] = prepared.clip_ms

    def step(a: Admitted, img: LoadedImage, s: Analyzed, t: dict[str, float]) -> ComposeStep:
        def composed() -> Composition:
            if on_image is not None:
                on_image(a.path)
            begun = time.perf_counter()
            composition = compose(img, s.analysis, a.rule, ctx)
            t["compose"] = elapsed_ms(begun)
            t.update(composition.llm_timings)
            return composition

        return partial(_guard, a.path, composed)

    def written(
        a: Admitted, img: LoadedImage, s: Analyzed, t: dict[str, float], c: Composition
    ) -> Result:
        begun = time.perf_counter()
        extra = interrogate(s, c, a.rule, ctx)
        if extra is not None:
            t["clip_prompt"] = elapsed_ms(begun)
        if should_write is not None and not should_write(a.path):
            return Result(a.path, "skipped", "lock lost before writing: another worker has it")
        reason = prepared.clip_reason
        return write_ok(a, img, s.analysis, c, reason, t, ctx, clip_prompt=extra)

    steps = [step(a, img, s, t) for (a, img, t), s in items]
    outcomes = compose_all(steps) if compose_all is not None else None
    # Write-behind: image i's clip_prompt and sidecar writes (four fsyncs) run on one writer
    # thread while image i+1's request is with the model, so the model never waits on a disk.
    with ThreadPoolExecutor(1, thread_name_prefix="promptd-write") as writer:
        pending: list[tuple[Path, Future[Result]]] = []
        for i, ((a, img, t), s) in enumerate(items):
            outcome = outcomes[i] if outcomes is not None else steps[i]()
            if isinstance(outcome, Result):
                results[a.path] = outcome
                continue
            job = partial(_guard, a.path, partial(written, a, img, s, t, outcome))
            pending.append((a.path, writer.submit(job)))
        for path, future in pending:
            results[path] = future.result()
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
