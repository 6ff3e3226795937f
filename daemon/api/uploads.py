"""What every upload route shares: reading the image, the mode, and running the stages.

An upload is read with its size checked (``api.max_upload_bytes``, 413), then handed to the
pipeline in two steps on the runner's threads: ``prepare`` (sniff, decode, the rule: CPU
only, so a bad image is refused with 415 or 422 before a stream opens) and ``finish``
(CLIP, Ollama, the document, and keeping it when ``api.save_to`` is set).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from fastapi import UploadFile

from daemon.api.deps import ApiDeps
from daemon.api.problems import ApiError
from daemon.config import Mode
from daemon.pipeline.keep import keep_upload
from daemon.pipeline.upload import (
    StageHook,
    UploadOutcome,
    load_upload,
    run_upload,
    seed_analysis,
    upload_document,
    upload_rule,
)
from daemon.records import EffectiveRule, LoadedImage

_DATA_URL = re.compile(r"^data:[^,]{0,200},", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Upload:
    """The bytes of one upload and what the request asked for."""

    data: bytes
    name: str | None
    mode: Mode | None
    hint: str


@dataclass(frozen=True)
class Prepared:
    """An upload decoded, with its rule."""

    upload: Upload
    loaded: LoadedImage
    rule: EffectiveRule


def choose_mode(deep_thinking: bool | None, mode: Mode | None) -> Mode | None:
    """``mode`` when given, else ``quality`` for deep thinking, else None (the rule's mode)."""
    if mode is not None:
        return mode
    return "quality" if deep_thinking else None


def too_large(size: int, limit: int) -> ApiError:
    """413 for an image over ``api.max_upload_bytes``."""
    return ApiError(
        413, f"image too large: {size:,} bytes is above api.max_upload_bytes ({limit:,})"
    )


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """The file part's bytes; 413 when over ``limit`` (checked before and while reading)."""
    if file.size is not None and file.size > limit:
        raise too_large(file.size, limit)
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise too_large(len(data), limit)
    return data


def decode_base64(text: str, limit: int) -> bytes:
    """Bytes of an A1111-style image string: bare base64 or a ``data:`` URL; 413/422 if bad."""
    stripped = _DATA_URL.sub("", text.strip(), count=1)
    if not stripped:
        raise ApiError(422, "image is empty: send base64 bytes or a data: URL", kind="bad_image")
    if len(stripped) > (limit + 2) // 3 * 4 + 4:
        raise too_large(len(stripped) * 3 // 4, limit)
    try:
        data = base64.b64decode("".join(stripped.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, f"image is not valid base64 ({exc})", kind="bad_image") from exc
    if len(data) > limit:
        raise too_large(len(data), limit)
    return data


def prepare(deps: ApiDeps, upload: Upload) -> Prepared:
    """Sniff and decode the bytes and find the rule (on a runner thread; CPU only)."""
    ctx = deps.view.ctx
    loaded = load_upload(upload.data, upload.name, ctx.config.images)
    rule = upload_rule(ctx, mode=upload.mode, hint=upload.hint, folder=deps.settings.save_to)
    return Prepared(upload, loaded, rule)


def finish(
    deps: ApiDeps, prepared: Prepared, hook: StageHook | None = None
) -> tuple[UploadOutcome, dict[str, Any]]:
    """CLIP, the LLM and the document (kept in ``api.save_to`` when set)."""
    ctx = deps.view.ctx
    outcome = run_upload(prepared.loaded, prepared.rule, ctx, hook)
    folder = deps.settings.save_to
    if folder is None:
        return outcome, upload_document(outcome)
    kept = keep_upload(outcome, prepared.upload.data, folder, ctx.config.images.extensions)
    return outcome, kept.document


def analyze_answer(outcome: UploadOutcome, document: dict[str, Any], hint: str) -> dict[str, Any]:
    """Seed 000's response (``success``, ``generatedPrompt``, ``analysis``, ``userInput``)
    plus the whole sidecar document under ``sidecar``."""
    return {
        "success": True,
        "generatedPrompt": outcome.line,
        "analysis": seed_analysis(outcome.analysis),
        "userInput": hint,
        "mode": document["mode"],
        "degradedReason": document["degraded_reason"],
        "sidecar": document,
    }


async def analyze(deps: ApiDeps, upload: Upload) -> dict[str, Any]:
    """The whole analyze request: admitted, prepared, finished, answered."""
    ticket = deps.runner.admit()
    try:
        prepared = await ticket.run(lambda: prepare(deps, upload))
        outcome, document = await ticket.run(lambda: finish(deps, prepared))
    finally:
        ticket.close()
    return analyze_answer(outcome, document, upload.hint)
