"""The review page's gallery: pages of the inbox, one record, thumbnails, caption edits.

- ``GET /api/gallery?status=&q=&sort=&offset=&limit=``: a page of the inbox filtered by
  status (ok, degraded, error, held, pending) and by text in the caption, with the counts.
- ``GET /api/gallery/{id}``: one image's record and caption; ``.../thumb?size=``: a JPEG.
- ``PUT /api/gallery/{id}/caption``: the user's caption, written atomically (``captions``).
- ``POST /api/captions/replace``: find-and-replace over the filtered captions; without
  ``token`` it previews, with the preview's token it writes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from daemon import sidecar
from daemon.api import captions
from daemon.api.deps import ApiDeps
from daemon.api.gallery import STATUSES, Item
from daemon.api.problems import ApiError, from_pipeline
from daemon.api.routes_status import count_tokens
from daemon.api.thumbs import SIDE
from daemon.errors import ImageError, PromptdError

StatusFilter = Literal["all", "ok", "degraded", "error", "held", "pending"]
PREVIEW_SIDE = 1024


class CaptionEdit(BaseModel):
    """A new caption for one image."""

    caption: str = Field(..., max_length=captions.MAX_CAPTION_CHARS)


class Replace(BaseModel):
    """Find-and-replace over the captions the gallery's filter shows."""

    find: str = Field(..., min_length=1, max_length=captions.MAX_FIND_CHARS)
    replace: str = Field("", max_length=captions.MAX_FIND_CHARS)
    case_sensitive: bool = False
    status: StatusFilter = "all"
    q: str = Field("", max_length=500)
    token: str | None = Field(None, description="The preview's token: write the changes")


def filtered(items: list[Item], status: str, q: str) -> list[Item]:
    """The items with ``status`` (or all) whose caption or path holds ``q`` (any case)."""
    needle = q.strip().casefold()
    return [
        i
        for i in items
        if (status == "all" or i.status == status)
        and (not needle or needle in i.caption.casefold() or needle in i.key.casefold())
    ]


def router(deps: ApiDeps) -> APIRouter:
    """The gallery routes over ``deps``."""
    api = APIRouter(tags=["gallery"])
    gallery = deps.gallery

    def resolve(item_id: str) -> tuple[Item, Path]:
        try:
            return gallery.resolve(item_id)
        except KeyError as exc:
            raise ApiError(404, "no such image in the inbox (moved or deleted?)") from exc

    @api.get("/api/gallery")
    async def page(
        status: StatusFilter = "all",
        q: Annotated[str, Query(max_length=500)] = "",
        sort: Literal["name", "newest"] = "name",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 48,
    ) -> dict[str, Any]:
        """A page of the inbox, filtered, with the count of each status."""
        items = await run_in_threadpool(gallery.items)
        counts = Counter(i.status for i in items)
        chosen = filtered(items, status, q)
        if sort == "newest":
            chosen.sort(key=lambda i: -i.mtime_ns)
        return {
            "total": len(chosen),
            "offset": offset,
            "limit": limit,
            "items": [i.summary() for i in chosen[offset : offset + limit]],
            "counts": {"all": len(items), **{s: counts.get(s, 0) for s in STATUSES}},
            "truncated": gallery.truncated,
        }

    @api.get("/api/gallery/{item_id}")
    async def record(item_id: str) -> dict[str, Any]:
        """One image: its summary, its record (read now) and its caption's token count."""
        item, path = await run_in_threadpool(resolve, item_id)
        docs = [sidecar.read_sidecar(p) for p in sidecar.sidecar_candidates(path)[1::2]]
        doc = next((d for d in docs if d and (d.get("image") or {}).get("file") == path.name), None)
        count, exact = await run_in_threadpool(count_tokens, deps, item.caption)
        return {**item.summary(), "record": doc, "tokens": count, "tokens_exact": exact}

    @api.get("/api/gallery/{item_id}/thumb")
    async def thumb(item_id: str, size: Literal["small", "large"] = "small") -> Response:
        """A JPEG of the image, 256 px (or 1024 px) on its long side."""
        _item, path = await run_in_threadpool(resolve, item_id)
        limits = deps.view.config.images
        side = SIDE if size == "small" else PREVIEW_SIDE
        try:
            data = await run_in_threadpool(deps.thumbs.thumbnail, path, limits, side)
        except ImageError as exc:
            raise from_pipeline(exc) from exc
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=30"}
        )

    @api.put("/api/gallery/{item_id}/caption")
    async def edit(item_id: str, edit: CaptionEdit) -> dict[str, Any]:
        """Write the user's caption (one line) to the image's .txt."""
        item, path = await run_in_threadpool(resolve, item_id)
        try:
            txt = await run_in_threadpool(
                captions.write_caption, path, item, edit.caption, deps.view.ctx
            )
        except (ValueError, PromptdError) as exc:
            raise from_pipeline(exc) from exc
        await run_in_threadpool(gallery.items, fresh=True)
        line = captions.clean_caption(edit.caption)
        count, exact = await run_in_threadpool(count_tokens, deps, line)
        return {
            "caption": line,
            "txt": txt.name,
            "owner": "user",
            "tokens": count,
            "tokens_exact": exact,
        }

    @api.post("/api/captions/replace")
    async def replace(request: Replace) -> dict[str, Any]:
        """Preview a find-and-replace over the filtered captions, or write it (with ``token``)."""
        items = await run_in_threadpool(gallery.items, fresh=request.token is not None)
        chosen = filtered(items, request.status, request.q)
        try:
            plan = captions.plan_replace(
                chosen, request.find, request.replace, case_sensitive=request.case_sensitive
            )
        except ValueError as exc:
            raise from_pipeline(exc) from exc
        if request.token is None:
            return {"applied": False, **plan.preview()}
        if request.token != plan.token:
            raise ApiError(409, "the captions changed since the preview; preview again")
        written, skipped = await run_in_threadpool(_apply, deps, plan)
        await run_in_threadpool(gallery.items, fresh=True)
        return {"applied": True, "written": written, "skipped": skipped, "total": len(plan.changes)}

    return api


def _apply(deps: ApiDeps, plan: captions.Plan) -> tuple[int, list[str]]:
    """Write each planned caption whose file still says what the preview showed."""
    written, skipped = 0, []
    for change in plan.changes:
        try:
            item, path = deps.gallery.resolve(change.id)
            current = path.with_name(item.txt or "").read_text("utf-8", errors="replace").strip()
            if item.txt is None or current != change.before:
                skipped.append(change.key)
                continue
            captions.write_caption(path, item, change.after, deps.view.ctx)
            written += 1
        except (KeyError, OSError, ValueError, PromptdError):
            skipped.append(change.key)
    return written, skipped
