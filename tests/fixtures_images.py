"""Shared pytest fixtures: images (loaded through conftest's pytest_plugins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ImageLimits
from tests.images import SMALL_MAX_PIXELS, make_bad_images, make_good_images


@pytest.fixture
def good_images(tmp_path: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A folder of readable images in every format and mode: (folder, name -> upright size)."""
    folder = tmp_path / "good"
    return folder, make_good_images(folder)


@pytest.fixture
def bad_images(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder of unusable files: (folder, name -> a word their error names under small_limits)."""
    folder = tmp_path / "bad"
    return folder, make_bad_images(folder)


@pytest.fixture
def small_limits() -> ImageLimits:
    """Image limits small enough that bad_images' large-header.png breaks them."""
    return ImageLimits(max_pixels=SMALL_MAX_PIXELS)
