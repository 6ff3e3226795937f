"""Shared pytest fixtures: clip (loaded through conftest's pytest_plugins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.analysis.clip import ClipAnalyzer
from daemon.config import ClipSettings
from tests.tinyclip import build_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP saved with save_pretrained, built once per test session (treat as read-only)."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def clip_settings(tiny_clip_dir: Path) -> ClipSettings:
    """ClipSettings that load the tiny CLIP on the CPU without touching the network."""
    return ClipSettings(model=str(tiny_clip_dir), device="cpu", offline=True)


@pytest.fixture
def clip_analyzer(clip_settings: ClipSettings, tmp_path: Path) -> ClipAnalyzer:
    """A ClipAnalyzer over the tiny CLIP, caching label embeddings under tmp_path/cache."""
    return ClipAnalyzer(clip_settings, tmp_path / "cache")
