"""What the API is built from: a view of the running service and its own collaborators.

``ServiceView`` is the part of `promptd run` the API reads (the live config and pipeline
context, the GPU lock, the folder queue, the tally); tests and benchmarks build one from the
same pieces without starting the service. ``ApiDeps`` adds what the API owns (the upload
runner, the gallery index, the thumbnail cache, the stop flag); ``build_deps`` makes them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

from daemon.api.gallery import Gallery
from daemon.api.runner import UploadRunner
from daemon.api.thumbs import ThumbCache
from daemon.config import ApiSettings, Config
from daemon.pipeline import Context
from daemon.service.live import Live
from daemon.service.queue import JobQueue
from daemon.service.state import ServiceState
from daemon.service.tally import Tally


@dataclass
class ServiceView:
    """The running service as the API sees it (reads only, except the GPU lock's turns)."""

    live: Live
    queue: JobQueue
    tally: Tally
    url: str = ""  # where the API listens, once it does

    @property
    def config(self) -> Config:
        """The config in force now (a reload replaces it)."""
        return self.live.config

    @property
    def ctx(self) -> Context:
        """The pipeline context in force now."""
        return self.live.ctx

    def state(self) -> ServiceState:
        """What `promptd status` would show now."""
        analyzer = self.live.ctx.analyzer
        return self.tally.snapshot(
            queue=len(self.queue),
            ollama=self.live.ollama_state,
            clip_device=str(getattr(analyzer, "device", "unknown")),
            api_url=self.url,
        )


@dataclass
class ApiDeps:
    """Everything the routes use; built once per server."""

    view: ServiceView
    settings: ApiSettings
    runner: UploadRunner
    gallery: Gallery
    thumbs: ThumbCache
    closing: threading.Event = field(default_factory=threading.Event)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def build_deps(view: ServiceView, settings: ApiSettings | None = None) -> ApiDeps:
    """The API's collaborators for ``view`` (``settings`` default to the view's config)."""
    settings = settings or view.config.api
    closing = threading.Event()
    runner = UploadRunner(
        max_pending=settings.max_pending,
        timeout_s=settings.timeout_s,
        priority=view.live.gpu.priority,
        closing=closing,
    )
    thumbs = ThumbCache(settings.thumbnail_cache_mb * 1024 * 1024, settings.thumbnail_cache_items)
    return ApiDeps(
        view=view,
        settings=settings,
        runner=runner,
        gallery=Gallery(lambda: view.ctx),
        thumbs=thumbs,
        closing=closing,
    )
