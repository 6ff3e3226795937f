"""Shared pytest fixtures: ollama (loaded through conftest's pytest_plugins)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_ollama import FakeOllama


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    """A fake Ollama server on 127.0.0.1 (free port), started for one test and stopped after it."""
    with FakeOllama() as server:
        yield server
