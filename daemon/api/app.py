"""The FastAPI application, built from its collaborators (no globals): ``create_app(deps)``.

The guard (``daemon.api.guard``) wraps every route; the routes come in small groups; the
review page is served from the API's own origin (``/`` and ``/static/``), so no CORS
middleware is needed or added: other sites' pages cannot read any answer.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from daemon import __version__
from daemon.api import (
    policy,
    problems,
    routes_analyze,
    routes_compat,
    routes_gallery,
    routes_status,
)
from daemon.api.deps import ApiDeps
from daemon.api.guard import Guard

STATIC = "static"


def static_dir() -> str:
    """The folder of the review page's files, shipped as package data."""
    return str(resources.files("daemon.api").joinpath(STATIC))


def create_app(deps: ApiDeps) -> FastAPI:
    """The whole API over ``deps``."""
    settings = deps.settings
    app = FastAPI(
        title="promptd",
        version=__version__,
        description="Prompts for images: the folder daemon's pipeline over HTTP, and a review "
        "page for the inbox. See the README's HTTP API section.",
    )
    problems.install(app)
    for group in (routes_analyze, routes_compat, routes_status, routes_gallery):
        app.include_router(group.router(deps))
    folder = static_dir()
    app.mount("/static", StaticFiles(directory=folder), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(f"{folder}/index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.add_middleware(
        Guard,
        hosts=policy.allowed_hosts(settings),
        token=settings.token,
        limit_for=lambda path: policy.body_limit(path, settings.max_upload_bytes),
    )
    app.state.deps = deps
    return app
