"""Routes for existing clients: AUTOMATIC1111's interrogate API and a JSON route for nodes.

- ``POST /sdapi/v1/interrogate``: A1111's request ``{"image": base64 or data: URL, "model":
  "clip"}`` and answer ``{"caption": ...}``. ``clip`` (the default) gives the prompt promptd
  would write to the .txt, in the defaults' mode; ``deepdanbooru`` gives comma-separated tags
  from CLIP alone (promptd's ``clip`` mode, no LLM); promptd's own mode names work too; any
  other model is A1111's 404 ``Model not found``. Extra fields are ignored, as in A1111.
- ``GET /sdapi/v1/options`` (200, a JSON object: chaiNNer's liveness probe) and
  ``GET /internal/ping`` (``{}``).
- ``POST /api/images/analyze-json``: ``{"image": base64, "user_prompt", "deep_thinking",
  "mode"}``, for ComfyUI-style HTTP nodes that send JSON, not multipart; the same answer as
  /api/images/analyze.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from daemon import __version__
from daemon.api.deps import ApiDeps
from daemon.api.problems import ApiError
from daemon.api.uploads import Upload, analyze, choose_mode, decode_base64
from daemon.config import MODES, Mode
from daemon.config.settings import HINT_MAX_CHARS

A1111_MODELS: dict[str, Mode | None] = {"clip": None, "deepdanbooru": "clip"}


class InterrogateRequest(BaseModel):
    """A1111's ``InterrogateRequest``."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field("", description="Base64 image, bare or as a data: URL")
    model: str = Field("clip", description="clip | deepdanbooru | speed | quality | vision")


class AnalyzeJson(BaseModel):
    """The JSON form of /api/images/analyze."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(..., description="Base64 image, bare or as a data: URL")
    user_prompt: str = Field("", max_length=HINT_MAX_CHARS)
    deep_thinking: bool = False
    mode: Mode | None = None


def router(deps: ApiDeps) -> APIRouter:
    """The compatibility routes over ``deps``."""
    api = APIRouter(tags=["compatibility"])
    limit = deps.settings.max_upload_bytes

    @api.post("/sdapi/v1/interrogate")
    async def interrogate(request: InterrogateRequest) -> dict[str, Any]:
        """A1111's interrogate: a caption for the image."""
        name = request.model.strip().lower()
        if name in A1111_MODELS:
            mode = A1111_MODELS[name]
        elif name in MODES and name != "clip":
            mode = name
        else:
            raise ApiError(404, "Model not found", kind="HTTPException")
        data = decode_base64(request.image, limit)
        answer = await analyze(deps, Upload(data, None, mode, ""))
        return {"caption": answer["generatedPrompt"]}

    @api.get("/sdapi/v1/options")
    async def options() -> dict[str, Any]:
        """A small settings object, so A1111 clients see a live server."""
        return {"sd_model_checkpoint": "promptd", "promptd_version": __version__}

    @api.get("/internal/ping")
    async def ping() -> dict[str, Any]:
        """A1111's UI ping."""
        return {}

    @api.post("/api/images/analyze-json")
    async def analyze_json(request: AnalyzeJson) -> dict[str, Any]:
        """/api/images/analyze for JSON clients: the image as base64."""
        data = decode_base64(request.image, limit)
        mode = choose_mode(request.deep_thinking, request.mode)
        return await analyze(deps, Upload(data, None, mode, request.user_prompt.strip()))

    return api
