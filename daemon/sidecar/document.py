"""The sidecar document (``promptd.sidecar/1``): built from the pipeline's records, pure.

``build_sidecar`` makes the record of a prompt (``ok`` or ``degraded``), ``build_error_sidecar``
the record of an image that could not be processed; both share one shape, described by the
JSON Schema shipped beside this module (``daemon.sidecar.schema.validate_sidecar`` checks a
document against it).

Every string that came from outside (the model's fields, labels, rule settings, reasons) is
recorded through ``daemon.clean``; names and paths are identifiers and are recorded exactly,
a name that is not valid UTF-8 with its escaped form (``daemon.fs.rawname``). The bytes of
the file are ``daemon.sidecar.encode``'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.clean import clean_text, clean_tree
from daemon.errors import PromptdError
from daemon.fs.rawname import display_name, record_names
from daemon.records import Analysis, Composition, EffectiveRule, ImageStats, LoadedImage

SCHEMA_ID = "promptd.sidecar/1"
_DIGITS = 4  # scores and statistics are rounded for readable records


def check_txt_line(line: str) -> str:
    """Return ``line`` if it is a valid caption: one clean line (``clean_text`` leaves it
    as it is), not blank; else raise ValueError."""
    if not line.strip():
        raise ValueError("the caption line is empty")
    if line.splitlines() != [line]:
        raise ValueError(f"the caption must be one line, got {line!r}")
    if clean_text(line) != line:
        raise ValueError(f"the caption must be clean text (see daemon.clean), got {line!r}")
    return line


def txt_bytes(line: str) -> bytes:
    """The bytes of a .txt sidecar: the caption line, UTF-8, with a final newline (like kohya's)."""
    return (check_txt_line(line) + "\n").encode("utf-8")


def utc_timestamp(when: datetime) -> str:
    """ISO-8601 UTC with a ``Z`` and milliseconds, e.g. ``2025-01-31T12:00:00.000Z``."""
    if when.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    stamp = when.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    """``value`` as plain, clean JSON data: tuples become lists, every string is cleaned."""
    return clean_tree(json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False)))


def _analysis(analysis: Analysis | None) -> dict[str, list[dict[str, Any]]]:
    """Category -> ranked labels, as JSON (labels come from config.yaml: cleaned)."""
    return {
        clean_text(category): [
            {"label": clean_text(s.label), "score": round(s.score, _DIGITS)} for s in scored
        ]
        for category, scored in (analysis or {}).items()
    }


def _stats(stats: ImageStats) -> dict[str, Any]:
    """The model-free statistics, as JSON (width and height live in ``image``)."""
    return {
        "brightness": round(stats.brightness, _DIGITS),
        "contrast": round(stats.contrast, _DIGITS),
        "saturation": round(stats.saturation, _DIGITS),
        "orientation": stats.orientation,
        "aspect_ratio": stats.aspect_ratio,
        "palette": [
            {"name": c.name, "hex": c.hex, "share": round(c.share, _DIGITS)} for c in stats.palette
        ],
    }


def _training(
    clip: str | None, mode_prompt: str, tags: Sequence[str], hint: bool
) -> dict[str, Any]:
    """The fields a training set reads beside the caption, in the order they are written."""
    return {"clip_prompt": clip, "mode_prompt": mode_prompt, "tags": list(tags), "hint_used": hint}


def _image(
    name: str, sha256: str | None, st: tuple[int, int], decoded: LoadedImage | None
) -> dict[str, Any]:
    """The ``image`` section; ``st`` is (bytes, mtime_ns); size and format null if not decoded."""
    return {
        **record_names(name),
        "sha256": sha256,
        "bytes": st[0],
        "mtime_ns": st[1],
        "width": decoded.width if decoded else None,
        "height": decoded.height if decoded else None,
        "format": decoded.format if decoded else None,
    }


def _document(
    *,
    status: str,
    mode: str | None,
    requested_mode: str,
    prompt: str,
    negative_prompt: str,
    training: dict[str, Any],
    analysis: Analysis | None,
    stats: ImageStats | None,
    context: Mapping[str, Any] | None,
    image: dict[str, Any],
    outputs: dict[str, Any],
    models: Mapping[str, str],
    clip_model: str | None,
    rule: EffectiveRule,
    timings_ms: Mapping[str, float] | None,
    created_at: datetime | None,
    degraded_reason: str | None,
    error: dict[str, str] | None,
) -> dict[str, Any]:
    """The one shape every sidecar has, in the order it is written."""
    extra_roles = {role: name for role, name in models.items() if role not in ("clip", "llm")}
    return {
        "schema": SCHEMA_ID,
        "status": status,
        "mode": mode,
        "requested_mode": requested_mode,
        "prompt": prompt,
        "negative_prompt": clean_text(negative_prompt),
        **_plain(training),
        "analysis": _analysis(analysis),
        "stats": _stats(stats) if stats else None,
        "context": _plain(context) if context else None,
        "image": image,
        "outputs": {**outputs, "txt": _shown(outputs.get("txt"))},
        "models": _plain({"clip": clip_model, "llm": models.get("llm"), **extra_roles}),
        "rule": {
            "sources": [display_name(str(path)) for path in rule.sources],
            "fingerprint": rule.fingerprint,
            "settings": _plain(rule.settings.model_dump(mode="json")),
        },
        "timings_ms": {  # the llm_*_tokens entries are counts, written as integers
            stage: int(ms) if stage.endswith("_tokens") else round(ms, 1)
            for stage, ms in (timings_ms or {}).items()
        },
        "created_at": utc_timestamp(created_at or datetime.now(timezone.utc)),
        "degraded_reason": _plain(degraded_reason),
        "error": _plain(error),
        "generator": {"name": "promptd", "version": __version__},
    }


def _shown(name: str | None) -> str | None:
    """A sidecar's own name as recorded: its display form (it follows from the image's name)."""
    return display_name(name) if name is not None else None


def build_sidecar(
    *,
    image: LoadedImage,
    rule: EffectiveRule,
    composition: Composition,
    analysis: Analysis | None,
    prompt: str,
    txt_name: str | None,
    txt_line: str | None = None,
    txt_kept: bool = False,
    negative_prompt: str | None = None,
    status: str | None = None,
    degraded_reason: str | None = None,
    clip_model: str | None = None,
    timings_ms: Mapping[str, float] | None = None,
    created_at: datetime | None = None,
    clip_prompt: str | None = None,
    tags: Sequence[str] = (),
    hint_used: bool = False,
) -> dict[str, Any]:
    """The record of a prompt: ``degraded`` when a fallback produced it, else ``ok``.

    ``prompt`` is the exact caption line, recorded even when no .txt is written; ``txt_name``
    names the .txt written now (its digest is that of ``txt_bytes(prompt)``; ``txt_line``, if
    given, must be that same line), ``txt_kept`` says a caption promptd did not write was kept.
    ``negative_prompt`` defaults to the composition's; ``degraded_reason`` to the
    composition's, and ``status`` follows from it (given, it must agree). ``analysis`` is None
    or empty when CLIP was unavailable. ``clip_prompt`` (the CLIP-Interrogator-style prompt,
    when the rule asked for it), ``tags`` and ``hint_used`` are recorded as given; the
    composition's own prompt is recorded as ``mode_prompt``. Inconsistent arguments raise
    ValueError.
    """
    check_txt_line(prompt)
    if txt_line is not None and txt_line != prompt:
        raise ValueError("the .txt line must be the recorded prompt")
    if txt_name is not None and txt_kept:
        raise ValueError("a .txt cannot be both written and kept")
    reason = degraded_reason or composition.degraded_reason
    derived = "degraded" if reason else "ok"
    if status is not None and status != derived:
        raise ValueError(f"status {status!r} disagrees with degraded_reason {reason!r}")
    digest = hashlib.sha256(txt_bytes(prompt)).hexdigest()
    return _document(
        status=derived,
        mode=composition.mode,
        requested_mode=composition.requested_mode,
        prompt=prompt,
        negative_prompt=(
            composition.negative_prompt if negative_prompt is None else negative_prompt
        ),
        training=_training(clip_prompt, composition.prompt, tags, hint_used),
        analysis=analysis,
        stats=image.stats,
        context=composition.context,
        image=_image(image.path.name, image.sha256, (image.bytes, image.mtime_ns), image),
        outputs={
            "txt": txt_name,
            "txt_sha256": digest if txt_name is not None else None,
            "txt_kept": txt_kept,
        },
        models=composition.models,
        clip_model=clip_model,
        rule=rule,
        timings_ms=timings_ms,
        created_at=created_at,
        degraded_reason=reason,
        error=None,
    )


def error_info(error: BaseException) -> dict[str, str]:
    """``{"kind", "message"}`` for a sidecar: our errors by kind, anything else as ``internal``."""
    if isinstance(error, PromptdError):
        return {"kind": error.kind, "message": error.message}
    return {"kind": "internal", "message": f"{type(error).__name__}: {error}"}


def build_error_sidecar(
    *,
    image_path: Path,
    stat: os.stat_result,
    rule: EffectiveRule,
    error: BaseException,
    sha256: str | None = None,
    analysis: Analysis | None = None,
    clip_model: str | None = None,
    timings_ms: Mapping[str, float] | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The record of an image that could not be processed (no .txt goes with it).

    Built from the file's stat (and its hash when it was read): size and format are null.
    An error record is ``fresh`` while the file is unchanged, so it is not retried forever.
    """
    return _document(
        status="error",
        mode=None,
        requested_mode=rule.settings.mode,
        prompt="",
        negative_prompt="",
        training=_training(None, "", (), False),
        analysis=analysis,
        stats=None,
        context=None,
        image=_image(image_path.name, sha256, (stat.st_size, stat.st_mtime_ns), None),
        outputs={"txt": None, "txt_sha256": None, "txt_kept": False},
        models={},
        clip_model=clip_model,
        rule=rule,
        timings_ms=timings_ms,
        created_at=created_at,
        degraded_reason=None,
        error=error_info(error),
    )
