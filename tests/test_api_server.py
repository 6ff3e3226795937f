"""The API on a real uvicorn server: on a thread of its own, and inside `promptd run`."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from daemon.api.deps import build_deps
from daemon.api.server import ApiServer
from daemon.config import load_config
from daemon.errors import ConfigError
from daemon.service.state import read_state, service_state_path
from tests.daemon_helpers import Daemon, wait_until
from tests.fake_ollama import FakeOllama
from tests.fixtures_api import ApiWorld, png
from tests.test_daemon import daemon_config


def read_stream(url: str, seen: list[str], opened: threading.Event) -> None:
    """POST an upload to the SSE route and collect the event names until the stream ends."""
    files = {"image": ("a.png", png(), "image/png")}
    with httpx.stream("POST", url + "api/images/analyze-stream", files=files, timeout=60) as answer:
        opened.set()
        for line in answer.iter_lines():
            if line.startswith("event: "):
                seen.append(line[7:])
            elif line.startswith("data: ") and seen and seen[-1] == "failed":
                seen.append(json.loads(line[6:])["error"]["kind"])


def test_server_stops_within_its_timeout_with_a_stream_open(
    make_world: Callable[..., ApiWorld],
) -> None:
    """A stream waiting on a slow model ends with `failed: stopping`; the thread is gone in time."""
    world = make_world(api={"listen": "127.0.0.1:0"})
    world.view.ctx.analyzer.load()  # type: ignore[union-attr]
    world.ollama.delay_s = 60.0
    server = ApiServer(build_deps(world.view), graceful_s=2.0)
    server.start()
    assert server.url.startswith("http://127.0.0.1:") and world.view.url == server.url
    assert httpx.get(server.url + "health").json()["status"] == "ok"
    seen: list[str] = []
    opened = threading.Event()
    reader = threading.Thread(target=read_stream, args=(server.url, seen, opened), daemon=True)
    reader.start()
    wait_until(lambda: "generating" in seen, 60, "the stream to reach the model")
    assert server.stop(timeout_s=10.0) is True
    reader.join(10)
    assert not reader.is_alive()
    assert seen[-2:] == ["failed", "stopping"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "health", timeout=2)


def test_server_port_in_use_is_a_config_error(make_world: Callable[..., ApiWorld]) -> None:
    """A taken port fails the start with a message naming api.listen."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        world = make_world(api={"listen": f"127.0.0.1:{taken.getsockname()[1]}"})
        server = ApiServer(build_deps(world.view))
        with pytest.raises(ConfigError, match=r"api\.listen"):
            server.start()
    finally:
        taken.close()


@pytest.mark.slow
def test_promptd_run_serves_the_api_says_where_and_stops_cleanly_with_a_stream_open(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """`promptd run` serves the API; status names its URL; SIGTERM with a stream open exits 0."""
    config = daemon_config(tmp_path, tiny_clip_dir, fake_ollama.url, watch={"stop_timeout_s": 10})
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        state_file = service_state_path(load_config(config, {}))
        state = wait_until(lambda: read_state(state_file), 30, "the status file")
        url = state.api_url
        assert url.startswith("http://127.0.0.1:")
        assert [e["url"] for e in daemon.events("api_listening")] == [url]
        status = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "status", "--config", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert f"http api:     {url}" in status.stdout
        assert httpx.get(url + "health").json()["service"]["name"] == "promptd"
        fake_ollama.delay_s = 120.0
        seen: list[str] = []
        opened = threading.Event()
        reader = threading.Thread(target=read_stream, args=(url, seen, opened), daemon=True)
        reader.start()
        wait_until(lambda: "generating" in seen, 90, "the stream to reach the model")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0
        reader.join(10)
        assert seen[-2:] == ["failed", "stopping"]
        assert not [e for e in daemon.events("api_stop_timeout")]
    finally:
        fake_ollama.delay_s = 0.0
        daemon.stop()
