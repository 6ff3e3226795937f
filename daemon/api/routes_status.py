"""How the service is doing: ``GET /health``, ``GET /api/status``, and the token counter.

- ``/health``: the service, CLIP, Ollama and both queues (the folder's and the uploads'),
  200 while serving, 503 once stopping.
- ``/api/status``: what ``promptd status`` shows, as the status file's JSON plus its text.
- ``POST /api/tokens``: CLIP tokens in a caption (CLIP's own tokenizer; a conservative
  estimate when CLIP cannot load), for the review page's counter against 75.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from daemon import __version__
from daemon.api.deps import ApiDeps
from daemon.errors import PromptdError
from daemon.pipeline.write import estimate_tokens
from daemon.service.state import format_status, state_to_json

TOKEN_WINDOW = 75  # Stable Diffusion's CLIP text window, less the start and end markers
MAX_TEXT = 10_000


class TokenRequest(BaseModel):
    """A caption to count."""

    text: str = Field(..., max_length=MAX_TEXT)


def count_tokens(deps: ApiDeps, text: str) -> tuple[int, bool]:
    """(count, exact): CLIP's tokenizer when it loads, else the pipeline's estimate."""
    analyzer = deps.view.ctx.analyzer
    if analyzer is not None:
        try:
            return analyzer.count_tokens(text), True
        except PromptdError:
            pass
    return estimate_tokens(text), False


def health(deps: ApiDeps) -> dict[str, Any]:
    """The /health document."""
    view = deps.view
    analyzer = view.ctx.analyzer
    ollama = view.live.ollama_state
    clip_loaded = bool(getattr(analyzer, "loaded", False))
    stopping = deps.closing.is_set() or view.live.stop.is_set()
    return {
        "status": "stopping" if stopping else ("ok" if ollama != "down" else "degraded"),
        "service": {
            "name": "promptd",
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round((datetime.now(timezone.utc) - deps.started_at).total_seconds()),
        },
        "clip": {
            "model": analyzer.model_id if analyzer is not None else None,
            "loaded": clip_loaded,
            "device": str(getattr(analyzer, "device", "unknown")),
        },
        "ollama": {"host": view.live.llm.host, "state": ollama},
        "queue": {
            "folder": len(view.queue),
            "uploads": deps.runner.pending,
            "uploads_max": deps.runner.max_pending,
        },
        "gpu": {"exclusive": view.live.gpu.exclusive, "uploads_first": view.live.gpu.claimed},
    }


def router(deps: ApiDeps) -> APIRouter:
    """The status routes over ``deps``."""
    api = APIRouter(tags=["status"])

    @api.get("/health")
    async def get_health() -> JSONResponse:
        """The service, CLIP, Ollama and the queues."""
        doc = health(deps)
        return JSONResponse(doc, 503 if doc["status"] == "stopping" else 200)

    @api.get("/api/status")
    async def get_status() -> dict[str, Any]:
        """What `promptd status` shows."""
        state = deps.view.state()
        doc: dict[str, Any] = json.loads(state_to_json(state))
        doc["text"] = format_status(state, now=datetime.now(timezone.utc), alive=True)
        return doc

    @api.post("/api/tokens")
    async def tokens(request: TokenRequest) -> dict[str, Any]:
        """CLIP tokens in ``text`` (without the start and end markers)."""
        started = time.perf_counter()
        count, exact = await run_in_threadpool(count_tokens, deps, request.text)
        return {
            "count": count,
            "limit": TOKEN_WINDOW,
            "exact": exact,
            "over": count > TOKEN_WINDOW,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }

    return api
