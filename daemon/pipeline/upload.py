"""Uploads: the folder's stages for an image that arrives as bytes (the HTTP API), in memory.

``load_upload`` sniffs the bytes against the formats promptd handles (never the client's
claimed type or name), then decodes and measures them exactly as *load* does for a file
(``decode_image`` under ``images.max_pixels``). ``upload_rule`` is the rule an upload gets:
config.yaml's ``defaults`` (or the rule of ``api.save_to``'s folder when that lies in an
inbox), with the request's mode and the user's own words as ``hint``. ``run_upload`` runs
*analyze* (CLIP) and *compose* (Ollama) through the same functions as a folder batch, and
``upload_document`` builds the sidecar document promptd would write. Nothing is written here;
``daemon.pipeline.keep`` saves an upload when the API is told to.
"""

from __future__ import annotations

import hashlib
import io
import time
import unicodedata
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from daemon import sidecar
from daemon.config import Config, ImageLimits, Mode, RuleSettings
from daemon.config.rules import fingerprint_for
from daemon.errors import ImageError
from daemon.pipeline.batch import analyze, compose
from daemon.pipeline.context import Context
from daemon.pipeline.load import decode_image
from daemon.pipeline.stats import compute_stats
from daemon.pipeline.write import elapsed_ms, negative_line, prompt_line
from daemon.records import Analysis, Composition, EffectiveRule, LoadedImage

log = structlog.get_logger("promptd.pipeline")

StageHook = Callable[[str, Mapping[str, Any]], None]  # (stage, payload) as the stream sends it
_NAME_CHARS = 120


class UnsupportedImageError(ImageError):
    """The bytes are not an image in a format promptd handles (the API answers 415)."""

    kind = "unsupported_image"


@dataclass(frozen=True)
class UploadOutcome:
    """An upload after *analyze* and *compose*: what the document and the answers are built from."""

    loaded: LoadedImage
    rule: EffectiveRule
    analysis: Analysis
    composition: Composition
    line: str  # the .txt line promptd would write
    clip_reason: str | None
    clip_model: str | None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def degraded_reason(self) -> str | None:
        """Why a fallback produced this (CLIP or the LLM unavailable); None when all ran."""
        reasons = [r for r in (self.clip_reason, self.composition.degraded_reason) if r]
        return "; ".join(reasons) or None


def pillow_formats(extensions: Collection[str]) -> tuple[str, ...]:
    """The Pillow format names behind ``images.extensions`` (``.jpg`` -> ``JPEG``), in order."""
    known = Image.registered_extensions()
    names = [known[ext.lower()] for ext in extensions if ext.lower() in known]
    return tuple(dict.fromkeys(names))


def display_name(name: str | None, image_format: str) -> str:
    """A printable, one-line file name for the record (never used as a path)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(c for c in base if unicodedata.category(c)[0] not in "CZ" or c == " ")
    kept = " ".join(kept.split())[:_NAME_CHARS].strip(". ")
    return kept or f"upload.{image_format.lower()}"


def sniff_format(data: bytes, formats: tuple[str, ...]) -> None:
    """Raise UnsupportedImageError unless Pillow recognises ``data`` as one of ``formats``."""
    if not data:
        raise ImageError("the upload is empty (0 bytes); send the image's bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=formats):
                return
        except UnidentifiedImageError as exc:
            raise UnsupportedImageError(
                f"not an image promptd reads: Pillow finds none of {', '.join(formats)} in "
                "these bytes (whatever the file's name or declared type says)"
            ) from exc
        except (Image.DecompressionBombError, OSError, ValueError, SyntaxError):
            return  # a recognised but hostile or damaged header: decode_image says why


def load_upload(data: bytes, name: str | None, limits: ImageLimits) -> LoadedImage:
    """Sniff, decode and measure uploaded bytes; ImageError (or UnsupportedImageError) says why not."""
    started = time.perf_counter()
    formats = pillow_formats(limits.extensions)
    sniff_format(data, formats)
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"image too large: {len(data):,} bytes is above images.max_bytes ({limits.max_bytes:,})"
        )
    image, image_format = decode_image(data, Path("upload"), limits.max_pixels, formats)
    loaded = LoadedImage(
        path=Path(display_name(name, image_format)),
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        mtime_ns=time.time_ns(),
        format=image_format,
        width=image.width,
        height=image.height,
        image=image,
        stats=compute_stats(image),
    )
    log.debug("upload_loaded", ms=round(elapsed_ms(started), 1), format=image_format)
    return loaded


def upload_rule(
    ctx: Context, *, mode: Mode | None, hint: str, folder: Path | None = None
) -> EffectiveRule:
    """The rule for an upload: ``folder``'s (when inside an inbox) or the defaults, then the
    request's ``mode`` and ``hint``. Raises ConfigError (invalid rule file) or ValueError
    (a hint over the limit)."""
    config: Config = ctx.config
    base: EffectiveRule | None = None
    if folder is not None and ctx.rules.root_of(folder) is not None:
        base = ctx.rules.resolve(folder / "upload.png")
    settings = base.settings if base is not None else config.defaults
    sources = (
        base.sources if base is not None else (() if config.source is None else (config.source,))
    )
    update: dict[str, Any] = {"hint": hint.strip()} if hint.strip() else {}
    if mode is not None:
        update["mode"] = mode
    try:
        settings = RuleSettings.model_validate({**settings.model_dump(), **update})
    except ValidationError as exc:
        raise ValueError("; ".join(str(e["msg"]) for e in exc.errors())) from exc
    return EffectiveRule(settings, tuple(sources), fingerprint_for(settings, config))


def seed_analysis(analysis: Analysis) -> dict[str, list[dict[str, Any]]]:
    """The analysis in seed 000's shape: category -> ``[{"value", "score"}]``, best first."""
    return {
        category: [{"value": s.label, "score": round(s.score, 4)} for s in ranked]
        for category, ranked in analysis.items()
    }


def run_upload(
    loaded: LoadedImage, rule: EffectiveRule, ctx: Context, on_stage: StageHook | None = None
) -> UploadOutcome:
    """*analyze* then *compose* one upload, telling ``on_stage`` as each stage starts and ends."""
    hook = on_stage or (lambda stage, payload: None)
    timings: dict[str, float] = {}
    hook("analyzing", {"message": "CLIP is looking at the image"})
    started = time.perf_counter()
    analyses, clip_reason = analyze([loaded], ctx)
    timings["analyze"] = elapsed_ms(started)
    analysis = analyses[0]
    hook("analyzed", {"analysis": seed_analysis(analysis)})
    hook("generating", {"message": f"writing the prompt ({rule.settings.mode} mode)"})
    started = time.perf_counter()
    composition = compose(loaded, analysis, rule, ctx)
    timings["compose"] = elapsed_ms(started)
    timings.update(composition.llm_timings)
    clip_model = ctx.analyzer.model_id if ctx.analyzer is not None and not clip_reason else None
    outcome = UploadOutcome(
        loaded=loaded,
        rule=rule,
        analysis=analysis,
        composition=composition,
        line=prompt_line(composition, rule, ctx),
        clip_reason=clip_reason,
        clip_model=clip_model,
        timings_ms=timings,
    )
    log.info(
        "upload",
        file=loaded.path.name,
        outcome="degraded" if outcome.degraded_reason else "ok",
        mode=composition.mode,
        reason=outcome.degraded_reason,
        timings_ms={k: round(v, 1) for k, v in timings.items()},
    )
    return outcome


def upload_document(
    outcome: UploadOutcome,
    *,
    image: LoadedImage | None = None,
    txt_name: str | None = None,
    txt_kept: bool = False,
) -> dict[str, Any]:
    """The sidecar document of an upload (``image`` replaces the record's file and stat when
    the upload is saved; ``txt_name`` names the .txt written beside it)."""
    return sidecar.build_sidecar(
        image=image or outcome.loaded,
        rule=outcome.rule,
        composition=outcome.composition,
        analysis=outcome.analysis,
        prompt=outcome.line,
        negative_prompt=negative_line(outcome.composition, outcome.rule),
        txt_name=txt_name,
        txt_line=outcome.line if txt_name is not None else None,
        txt_kept=txt_kept,
        clip_model=outcome.clip_model,
        degraded_reason=outcome.degraded_reason,
        timings_ms=outcome.timings_ms,
    )
