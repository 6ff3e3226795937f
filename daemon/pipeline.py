"""The pipeline: named stage functions that turn image paths into sidecars.

admit -> load -> analyze -> compose -> write. Each stage is a plain function over the
records in ``daemon.jobs``; nothing here starts a thread. A skipped or held image is a
``Result`` with a reason, not an exception. ``process_batch`` runs the stages for a few
paths at once so CLIP sees them as one batch; the CLI and the daemon both call it.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from PIL import Image

from . import imaging, sidecar
from .compose.modes import Composer
from .compose.text import assemble_line
from .config import Config, Mode
from .errors import ConfigError, ImageError, PromptdError
from .jobs import Analysis, Composition, EffectiveRule, LoadedImage, Result
from .names import is_ignored_name
from .rules import RuleResolver, fingerprint_for
from .treewalk import is_ignored_path, scan

log = structlog.get_logger("promptd.pipeline")
_T = TypeVar("_T")


class Analyzer(Protocol):
    """What the pipeline needs from CLIP (daemon.analysis.clip.ClipAnalyzer)."""

    @property
    def model_id(self) -> str: ...

    def analyze(self, images: Sequence[Image.Image]) -> list[Analysis]: ...

    def count_tokens(self, text: str) -> int: ...


@dataclass(frozen=True)
class Context:
    """Everything the stages need, built once by the CLI or the service."""

    config: Config
    rules: RuleResolver
    analyzer: Analyzer | None
    composer: Composer
    mode_override: Mode | None = None


@dataclass(frozen=True)
class Admitted:
    """An image that needs (re)processing, with the rule that governs it."""

    path: Path
    stat: os.stat_result
    rule: EffectiveRule
    sidecars: sidecar.SidecarPaths
    previous: dict[str, Any] | None


# --- admit -------------------------------------------------------------------------------


def is_candidate(path: Path, config: Config) -> bool:
    """True when the name looks like an image promptd should handle (no stat)."""
    return path.suffix.lower() in config.images.extensions and not is_ignored_name(
        path.name, config.images.ignore
    )


def admit(
    path: Path,
    ctx: Context,
    *,
    force: bool = False,
    redo_degraded: bool = True,
    folders: dict[Path, sidecar.FolderIndex] | None = None,
) -> Admitted | Result:
    """Decide whether ``path`` needs work: eligible, governed by a valid rule, not up to date.

    ``folders`` caches each folder's indexed listing across a batch (the stem-collision check
    would otherwise list the whole folder once per image).
    """
    config = ctx.config
    if not is_candidate(path, config):
        return Result(path, "skipped", "not an image name promptd handles")
    found = ctx.rules.locate(path)  # (root, resolved path); a symlink file is refused below
    if found is None or is_ignored_path(found[1], found[0], extra=config.images.ignore):
        return Result(path, "skipped", "outside every inbox, or inside an ignored folder")
    try:
        st = path.stat(follow_symlinks=False)
    except FileNotFoundError:
        return Result(path, "skipped", "file vanished")
    if not stat.S_ISREG(st.st_mode):  # symlinks are never followed
        return Result(path, "skipped", "not a regular file")
    try:
        rule = ctx.rules.resolve(path)
    except ConfigError as exc:
        return Result(path, "held", f"held by an invalid rule file: {exc}")
    if ctx.mode_override is not None and ctx.mode_override != rule.settings.mode:
        rule = _with_mode(rule, ctx.mode_override, config)
    index = None
    if folders is not None:
        index = folders.get(path.parent)
        if index is None:
            index = folders[path.parent] = sidecar.index_folder(
                sidecar.folder_names(path.parent), config.images.extensions
            )
    paths = sidecar.sidecar_paths(path, rule.settings.naming, config.images.extensions, index)
    previous = sidecar.read_sidecar(paths.json)
    if previous is None and sidecar.json_is_foreign(paths.json):
        return Result(
            path,
            "failed",
            f"{paths.json.name} exists and was not written by promptd; move it away "
            "or set naming to the other form in a .promptd.yaml",
        )
    if not force:
        state = freshness_of(paths.txt, previous, st, rule)
        if state == "fresh" or (state == "degraded" and not redo_degraded):
            return Result(path, "skipped", f"up to date ({state})")
    return Admitted(path, st, rule, paths, previous)


def _with_mode(rule: EffectiveRule, mode: Mode, config: Config) -> EffectiveRule:
    settings = rule.settings.model_copy(update={"mode": mode})
    return EffectiveRule(settings, rule.sources, fingerprint_for(settings, config))


def freshness_of(
    txt_path: str | os.PathLike[str],
    previous: dict[str, Any] | None,
    st: os.stat_result,
    rule: EffectiveRule,
) -> str:
    """fresh | degraded | stale, from the stat and the previous .json only (no hashing)."""
    if "json" in rule.settings.outputs:
        return "stale" if previous is None else sidecar.freshness(previous, st, rule.fingerprint)
    # Without a .json there is no record of settings: a .txt newer than the image counts.
    try:
        return "fresh" if Path(txt_path).stat().st_mtime_ns >= st.st_mtime_ns else "stale"
    except FileNotFoundError:
        return "stale"


# --- load, analyze, compose, write ------------------------------------------------------


def load(admitted: Admitted, ctx: Context) -> LoadedImage:
    """Read, hash and decode the image under the configured limits (raises ImageError)."""
    return imaging.read_image(admitted.path, ctx.config.images)


def analyze(images: Sequence[LoadedImage], ctx: Context) -> tuple[list[Analysis], str | None]:
    """CLIP zero-shot for a batch; on failure, empty analyses and the reason."""
    if ctx.analyzer is None or not images:
        return [{} for _ in images], None
    try:
        return ctx.analyzer.analyze([img.image for img in images]), None
    except PromptdError as exc:
        log.warning("clip_unavailable", error=str(exc))
        return [{} for _ in images], f"CLIP unavailable: {exc.message}"


def compose(
    loaded: LoadedImage, analysis: Analysis, rule: EffectiveRule, ctx: Context
) -> Composition:
    """Ask the composer for a prompt in the rule's mode (falls back to `clip` by itself)."""
    return ctx.composer.compose(
        rule.settings.mode,
        rule.settings,
        analysis,
        imaging.describe_stats(loaded.stats),
        loaded.image,
    )


def prompt_line(composition: Composition, rule: EffectiveRule, ctx: Context) -> str:
    """The one line of the .txt: trigger words, prefix, prompt, suffix, fitted to the token budget."""
    s = rule.settings
    return assemble_line(
        s.trigger_words, s.prefix, composition.prompt, s.suffix, s.max_prompt_tokens, _counter(ctx)
    )


def _counter(ctx: Context) -> Callable[[str], int]:
    analyzer = ctx.analyzer
    if analyzer is None:
        return estimate_tokens

    def count(text: str) -> int:
        try:
            return analyzer.count_tokens(text)
        except PromptdError:
            return estimate_tokens(text)

    return count


def estimate_tokens(text: str) -> int:
    """A conservative stand-in for the CLIP tokenizer: words and punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def negative_line(composition: Composition, rule: EffectiveRule) -> str:
    """The rule's fixed negative terms first, then the model's."""
    parts = [p for p in (rule.settings.negative_prompt.strip(), composition.negative_prompt) if p]
    return ", ".join(parts)


def write_ok(
    admitted: Admitted,
    loaded: LoadedImage,
    analysis: Analysis,
    composition: Composition,
    clip_reason: str | None,
    timings: dict[str, float],
    ctx: Context,
) -> Result:
    """Write the .txt (unless a foreign caption is kept) and the .json; return the result."""
    started = time.perf_counter()
    rule = admitted.rule
    line = prompt_line(composition, rule, ctx)
    reasons = [r for r in (clip_reason, composition.degraded_reason) if r]
    status = "degraded" if reasons else "ok"
    txt_plan = sidecar.plan_txt(
        admitted.sidecars, rule.settings.existing_caption, admitted.previous
    )
    txt_line = line if txt_plan == "write" and "txt" in rule.settings.outputs else None
    doc = sidecar.build_sidecar(
        image=loaded,
        status=status,
        rule=rule,
        composition=composition,
        analysis=analysis,
        prompt=line,
        negative_prompt=negative_line(composition, rule),
        txt_name=admitted.sidecars.txt.name if txt_line is not None else None,
        txt_line=txt_line,
        txt_kept=txt_plan == "keep" and "txt" in rule.settings.outputs,
        clip_model=ctx.analyzer.model_id if ctx.analyzer is not None and not clip_reason else None,
        degraded_reason="; ".join(reasons) or None,
        timings_ms=timings,
    )
    written = sidecar.write_sidecars(
        admitted.sidecars, txt_line=txt_line, doc=doc, outputs=rule.settings.outputs
    )
    timings["write"] = _ms(started)
    return Result(
        admitted.path,
        "degraded" if reasons else "ok",
        "; ".join(reasons) or None,
        composition.mode,
        written,
        dict(timings),
    )


def write_error(admitted: Admitted, error: PromptdError, timings: dict[str, float]) -> Result:
    """Record why this image failed in its .json; no .txt; the image is left untouched."""
    doc = sidecar.build_error_sidecar(
        image_path=admitted.path,
        stat=admitted.stat,
        rule=admitted.rule,
        error=error,
        timings_ms=timings,
    )
    written = sidecar.write_sidecars(admitted.sidecars, txt_line=None, doc=doc, outputs=("json",))
    if sidecar.txt_is_ours(admitted.sidecars.txt, admitted.previous):
        # The image was fine before and is broken now: its old prompt no longer describes it.
        admitted.sidecars.txt.unlink(missing_ok=True)
    return Result(admitted.path, "error", error.message, None, written, dict(timings))


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
            timings["load"] = _ms(started)
            results[path] = _guard(path, partial(write_error, admitted, exc, timings))
            continue
        timings["load"] = _ms(started)
        work.append((admitted, loaded, timings))
    return Prepared(tuple(paths), results, tuple(work))


def finish_batch(prepared: Prepared, ctx: Context) -> list[Result]:
    """CLIP over the batch at once, then compose and write each image; one log line each."""
    results = dict(prepared.results)
    work = prepared.work
    started = time.perf_counter()
    analyses, clip_reason = analyze([loaded for _, loaded, _ in work], ctx)
    share = _ms(started) / max(len(work), 1)
    for (admitted, loaded, timings), analysis in zip(work, analyses, strict=True):
        timings["analyze"] = share

        def finish(
            a: Admitted = admitted,
            img: LoadedImage = loaded,
            an: Analysis = analysis,
            t: dict[str, float] = timings,
        ) -> Result:
            begun = time.perf_counter()
            composition = compose(img, an, a.rule, ctx)
            t["compose"] = _ms(begun)
            return write_ok(a, img, an, composition, clip_reason, t, ctx)

        results[admitted.path] = _guard(admitted.path, finish)
    ordered = [results[p] for p in prepared.paths]
    for result in ordered:
        log_result(result)
    return ordered


def process_batch(
    paths: Sequence[Path], ctx: Context, *, force: bool = False, redo_degraded: bool = True
) -> list[Result]:
    """Run every stage for a few paths; CLIP sees the decodable ones as one batch."""
    return finish_batch(prepare_batch(paths, ctx, force=force, redo_degraded=redo_degraded), ctx)


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


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


# --- discovery -----------------------------------------------------------------------------


def discover(targets: Sequence[Path], config: Config) -> Iterator[Path]:
    """Every candidate image under the given files and folders (hidden folders skipped)."""
    for target in targets:
        if target.is_dir():
            yield from sorted(
                scan(
                    target,
                    is_candidate=lambda p: is_candidate(p, config),
                    ignore=config.images.ignore,
                )
            )
        elif is_candidate(target, config):
            yield target
