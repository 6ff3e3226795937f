"""Opt-in: the compose stage against a real Ollama (PROMPTD_REAL_OLLAMA=http://host:11434)."""

from __future__ import annotations

import os

import pytest

from daemon.config import OllamaSettings, RuleSettings
from daemon.pipeline.compose.client import OllamaLLM
from daemon.pipeline.compose.modes import Composer
from daemon.records import Scored

HOST = os.environ.get("PROMPTD_REAL_OLLAMA")
pytestmark = [
    pytest.mark.real_ollama,
    pytest.mark.skipif(not HOST, reason="set PROMPTD_REAL_OLLAMA to a real Ollama server's URL"),
]


def test_real_ollama_speed_mode_writes_a_clean_prompt() -> None:
    """The configured speed model answers with a schema-valid, single-line English prompt."""
    settings = OllamaSettings(host=HOST)
    composer = Composer(settings, OllamaLLM(settings))
    analysis = {
        "subjects": (Scored("landscape", 0.7), Scored("mountains", 0.2)),
        "mood": (Scored("peaceful", 0.6),),
    }
    result = composer.compose(
        "speed", RuleSettings(), analysis, "bright landscape image (3:2) dominated by orange", None
    )
    assert result.degraded_reason is None, result.degraded_reason
    assert result.mode == "speed"
    assert result.prompt and "\n" not in result.prompt
