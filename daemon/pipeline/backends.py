"""Builds the pipeline's collaborators from a Config: the one place that wires backends."""

from __future__ import annotations

from contextlib import AbstractContextManager

from daemon.config import Config, Mode, cache_dir
from daemon.config.rules import RuleResolver
from daemon.pipeline.analyze.clip import ClipAnalyzer
from daemon.pipeline.compose.client import OllamaLLM
from daemon.pipeline.compose.modes import Composer
from daemon.pipeline.context import Context


def build_context(
    config: Config,
    *,
    mode_override: Mode | None = None,
    gpu_lock: AbstractContextManager[object] | None = None,
    analyzer: ClipAnalyzer | None = None,
    llm: OllamaLLM | None = None,
) -> Context:
    """A pipeline context with the real CLIP analyzer and Ollama client (both load lazily)."""
    llm = llm or OllamaLLM(config.ollama, gpu_lock=gpu_lock)
    return Context(
        config=config,
        rules=RuleResolver(config),
        analyzer=analyzer or ClipAnalyzer(config.clip, cache_dir(config), gpu_lock=gpu_lock),
        composer=Composer(config.ollama, llm, vision_long_side=config.images.vision_long_side),
        mode_override=mode_override,
    )
