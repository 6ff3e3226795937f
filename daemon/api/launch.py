"""Wiring the API into `promptd run`: the companion the service starts and stops.

fastapi, uvicorn and python-multipart are core dependencies (the daemon serves the review
page by default, and they are small pure-Python packages beside torch); should they be
missing anyway (an install with ``--no-deps``), `promptd run` refuses to start with a
message saying what to install or which setting turns the API off.
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.errors import ConfigError
from daemon.service.daemon import Companion, Service


def api_companions(service: Service) -> Sequence[Companion]:
    """The HTTP API for ``service``, or nothing when ``api.enabled`` is false."""
    config = service.live.config
    if not config.api.enabled:
        return []
    try:
        from daemon.api.deps import ServiceView, build_deps
        from daemon.api.server import ApiServer
    except ImportError as exc:
        raise ConfigError(
            f"the HTTP API needs fastapi, uvicorn and python-multipart ({exc}): reinstall "
            "promptd with its dependencies, or set api.enabled: false in config.yaml"
        ) from exc
    view = ServiceView(live=service.live, queue=service.queue, tally=service.tally)
    graceful = min(5.0, max(1.0, config.watch.stop_timeout_s / 3))
    return [ApiServer(build_deps(view), graceful_s=graceful)]
