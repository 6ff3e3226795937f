"""Shared pytest fixtures: the HTTP API over the real pipeline (tiny CLIP, fake Ollama).

``api_world`` builds what `promptd run` would hand the API (the live config and context, the
folder queue, the tally) from a real config.yaml in tmp_path, without starting the service's
threads; ``make_world`` takes overrides. The TestClient talks to 127.0.0.1:8765, a name on
the Host allow-list.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from daemon.api.app import create_app
from daemon.api.deps import ApiDeps, ServiceView, build_deps
from daemon.config import Config, load_config
from daemon.service.gpulock import GpuLock
from daemon.service.live import Live
from daemon.service.queue import JobQueue
from daemon.service.tally import Tally
from tests.fake_ollama import FakeOllama
from tests.images import SMALL_MAX_PIXELS, scene

BASE_URL = "http://127.0.0.1:8765"


@dataclass
class ApiWorld:
    """One API over one inbox, with its fake Ollama."""

    root: Path
    inbox: Path
    config: Config
    view: ServiceView
    deps: ApiDeps
    client: TestClient
    ollama: FakeOllama


def write_api_config(root: Path, clip_dir: Path, ollama_url: str, **sections: Any) -> Path:
    """A config.yaml under ``root`` for an API test; ``sections`` are merged over the base."""
    config: dict[str, Any] = {
        "inbox": str(root / "inbox"),
        "cache_dir": str(root / "cache"),
        "clip": {"model": str(clip_dir), "device": "cpu", "offline": True, "batch_size": 4},
        "ollama": {
            "host": ollama_url,
            "retries": 0,
            "backoff_s": 0.01,
            "timeout": {"connect_s": 2, "read_s": 20},
        },
        "images": {"max_pixels": SMALL_MAX_PIXELS},
        "log": {"format": "json", "level": "warning"},
        "api": {},
        "defaults": {},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    (root / "inbox").mkdir(exist_ok=True)
    return path


def png(size: tuple[int, int] = (96, 64), hue: int = 0) -> bytes:
    """A small real PNG."""
    buffer = io.BytesIO()
    scene(size, hue_shift=hue).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(size: tuple[int, int] = (96, 64), hue: int = 0) -> bytes:
    """A small real JPEG."""
    buffer = io.BytesIO()
    scene(size, hue_shift=hue).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def view_for(config: Config, queue_size: int = 4096) -> ServiceView:
    """What the service would hand the API, built from ``config``."""
    live = Live(config, GpuLock(config.gpu.exclusive))
    return ServiceView(live=live, queue=JobQueue(queue_size), tally=Tally())


@pytest.fixture
def make_world(tmp_path: Path, tiny_clip_dir: Path) -> Iterator[Callable[..., ApiWorld]]:
    """A factory of ApiWorlds (config sections as keyword arguments); all stopped at the end."""
    made: list[tuple[TestClient, FakeOllama, ApiDeps]] = []

    def make(*, ollama: FakeOllama | None = None, **sections: Any) -> ApiWorld:
        fake = ollama or FakeOllama().start()
        root = tmp_path / f"world{len(made)}"
        root.mkdir()
        config = load_config(write_api_config(root, tiny_clip_dir, fake.url, **sections), {})
        view = view_for(config)
        deps = build_deps(view)
        client = TestClient(create_app(deps), base_url=BASE_URL)
        client.__enter__()
        made.append((client, fake, deps))
        return ApiWorld(root, root / "inbox", config, view, deps, client, fake)

    yield make
    for client, fake, deps in made:
        deps.closing.set()
        client.__exit__(None, None, None)
        deps.runner.shutdown()
        fake.stop()


@pytest.fixture
def api_world(make_world: Callable[..., ApiWorld]) -> ApiWorld:
    """An ApiWorld with the default settings."""
    return make_world()
