"""uvicorn inside `promptd run`: the API on its own thread, stopped from the service's stop path.

The socket is bound before the thread starts, so a port in use fails `promptd run` at start
with a clear message. uvicorn's signal handling is left out (the service keeps its own;
off the main thread uvicorn installs none, and ``capture_signals`` is a no-op here either
way). ``stop`` sets the API's closing flag (open streams end with a ``failed`` event, waiting
requests answer 503), asks uvicorn to exit with a finite graceful timeout, and joins the
thread, all within the time it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import structlog
import uvicorn

from daemon.api.app import create_app
from daemon.api.deps import ApiDeps
from daemon.config.apisettings import split_listen
from daemon.errors import ConfigError

log = structlog.get_logger("promptd.api")
START_TIMEOUT_S = 15.0


class _Server(uvicorn.Server):
    """uvicorn.Server that never touches signal handlers (the daemon owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def url_of(host: str, port: int) -> str:
    """``http://HOST:PORT/`` with IPv6 in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def bind(listen: str) -> socket.socket:
    """A listening socket for ``api.listen``; ConfigError saying what to change when it fails."""
    host, port = split_listen(listen)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted ones inherit it
        sock.bind(info[4])
        sock.listen(128)
    except OSError as exc:
        raise ConfigError(
            f"api.listen {listen}: cannot listen there ({exc.strerror or exc}); another "
            "program (or promptd) may use the port: change api.listen or set api.enabled: false"
        ) from exc
    sock.setblocking(False)
    return sock


class ApiServer:
    """The API's uvicorn server on a thread of its own."""

    name = "http api"

    def __init__(self, deps: ApiDeps, *, graceful_s: float = 2.0) -> None:
        self.deps = deps
        self._graceful_s = graceful_s
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> None:
        """Bind, start serving on a thread, and wait until uvicorn is up (ConfigError if not)."""
        sock = bind(self.deps.settings.listen)
        host, port = sock.getsockname()[:2]
        self.url = url_of(host, port)
        self.deps.view.url = self.url
        config = uvicorn.Config(
            create_app(self.deps),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(self._graceful_s)),
            timeout_keep_alive=5,
        )
        server = self._server = _Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name="promptd-api-server",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise ConfigError(f"the HTTP API did not start on {self.url}")
            time.sleep(0.02)
        log.info("api_listening", url=self.url, token=self.deps.settings.token is not None)

    def stop(self, timeout_s: float) -> bool:
        """End streams and requests, stop uvicorn, join its thread; False if it outlived ``timeout_s``."""
        self.deps.closing.set()
        self.deps.runner.shutdown()
        if self._server is None or self._thread is None:
            return True
        self._server.should_exit = True
        self._thread.join(timeout_s)
        stopped = not self._thread.is_alive()
        if not stopped:
            log.warning("api_stop_timeout", seconds=timeout_s)
        return stopped
