"""The seeds' endpoints: analyze an upload (whole, or as a stream of stages), and image context.

- ``POST /api/images/analyze``: multipart ``image``, optional ``user_prompt`` (the user's
  own words, at most 1,000 characters, given to the LLM as their instructions),
  ``deep_thinking`` (quality mode) and ``mode`` (overrides it). Answers seed 000's fields and
  the whole sidecar document under ``sidecar``.
- ``POST /api/images/analyze-stream``: the same, as Server-Sent Events (``daemon.api.sse``).
- ``POST /image-context``: seed 001's ten ``ImageContext`` fields from the vision mode, or
  from quality mode (saying so in ``note``) when no vision model is available.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from daemon.api.deps import ApiDeps
from daemon.api.problems import ApiError
from daemon.api.sse import TicketStream, upload_events
from daemon.api.uploads import Prepared, Upload, analyze, choose_mode, finish, prepare, read_upload
from daemon.config import Mode
from daemon.config.settings import HINT_MAX_CHARS
from daemon.pipeline.compose.schemas import CONTEXT_FIELDS
from daemon.pipeline.upload import upload_rule

ImagePart = Annotated[UploadFile, File(description="The image (its bytes decide the format)")]
UserPrompt = Annotated[
    str, Form(max_length=HINT_MAX_CHARS, description="Your own instructions for the LLM")
]
DeepThinking = Annotated[bool, Form(description="true: quality mode (seed 000's checkbox)")]
ModeField = Annotated[Mode | None, Form(description="speed | quality | vision | clip")]


def router(deps: ApiDeps) -> APIRouter:
    """The analyze and image-context routes over ``deps``."""
    api = APIRouter(tags=["analyze"])
    limit = deps.settings.max_upload_bytes

    async def upload_of(
        image: UploadFile, user_prompt: str, deep: bool, mode: Mode | None
    ) -> Upload:
        data = await read_upload(image, limit)
        return Upload(data, image.filename, choose_mode(deep, mode), user_prompt.strip())

    @api.post("/api/images/analyze")
    async def analyze_image(
        image: ImagePart,
        user_prompt: UserPrompt = "",
        deep_thinking: DeepThinking = False,
        mode: ModeField = None,
    ) -> dict[str, Any]:
        """Analyse the image and write its prompt: seed 000's answer plus the sidecar document."""
        return await analyze(deps, await upload_of(image, user_prompt, deep_thinking, mode))

    @api.post("/api/images/analyze-stream", response_class=TicketStream, status_code=200)
    async def analyze_stream(
        image: ImagePart,
        user_prompt: UserPrompt = "",
        deep_thinking: DeepThinking = False,
        mode: ModeField = None,
    ) -> TicketStream:
        """The same as /api/images/analyze, as Server-Sent Events (read it with fetch)."""
        upload = await upload_of(image, user_prompt, deep_thinking, mode)
        ticket = deps.runner.admit()
        try:
            prepared = await ticket.run(lambda: prepare(deps, upload))
        except BaseException:
            ticket.close()
            raise
        return TicketStream(upload_events(deps, prepared, ticket), ticket)

    @api.post("/image-context")
    async def image_context(
        file: Annotated[UploadFile | None, File(description="The image (seed 001)")] = None,
        image: Annotated[UploadFile | None, File(description="Or under this name")] = None,
    ) -> dict[str, Any]:
        """Seed 001's context fields, from the vision model (or quality mode, saying so)."""
        part = file or image
        if part is None:
            raise ApiError(422, "send the image as the multipart field `file`")
        data = await read_upload(part, limit)
        upload = Upload(data, part.filename, "vision", "")
        ticket = deps.runner.admit()
        try:
            prepared = await ticket.run(lambda: prepare(deps, upload))
            return await ticket.run(lambda: _context(deps, prepared))
        finally:
            ticket.close()

    return api


def _context(deps: ApiDeps, prepared: Prepared) -> dict[str, Any]:
    """Vision first; quality when vision fell back; 503 when no LLM could answer."""
    outcome, document = finish(deps, prepared)
    note = None
    if outcome.composition.mode != "vision":
        why = outcome.composition.degraded_reason or "the vision model did not answer"
        note = (
            f"no vision model available ({why}); these fields come from quality mode, "
            "which reads CLIP's analysis of the image, not the image itself"
        )
        rule = upload_rule(deps.view.ctx, mode="quality", hint="", folder=deps.settings.save_to)
        outcome, document = finish(deps, replace(prepared, rule=rule))
    context = outcome.composition.context
    if context is None:
        raise ApiError(
            503,
            f"no language model could describe the image: {outcome.degraded_reason}",
            kind="unavailable",
            headers={"Retry-After": "30"},
        )
    fields = {name: context.get(name) for name in CONTEXT_FIELDS}
    return {
        **fields,
        "clip_prompt": context.get("clip_prompt"),
        "mode": outcome.composition.mode,
        "note": note,
        "sidecar": document,
    }
