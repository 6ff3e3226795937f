"""Shared pytest fixtures: clip (loaded through conftest's pytest_plugins)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from daemon.config import ClipSettings

if TYPE_CHECKING:  # imported in the fixtures, so sessions that need no CLIP skip torch
    from daemon.pipeline.analyze.clip import ClipAnalyzer


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP saved with save_pretrained, built once per test session (treat as read-only)."""
    from tests.tinyclip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def clip_settings(tiny_clip_dir: Path) -> ClipSettings:
    """ClipSettings that load the tiny CLIP on the CPU without touching the network."""
    return ClipSettings(model=str(tiny_clip_dir), device="cpu", offline=True)


@pytest.fixture
def clip_analyzer(clip_settings: ClipSettings, tmp_path: Path) -> ClipAnalyzer:
    """A ClipAnalyzer over the tiny CLIP, caching label embeddings under tmp_path/cache."""
    from daemon.pipeline.analyze.clip import ClipAnalyzer

    return ClipAnalyzer(clip_settings, tmp_path / "cache")
