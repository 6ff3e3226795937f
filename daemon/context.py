"""Builds the pipeline's collaborators from a Config: the one place that wires backends."""

from __future__ import annotations

from contextlib import AbstractContextManager

from .analysis.clip import ClipAnalyzer
from .compose.client import OllamaLLM
from .compose.modes import Composer
from .config import Config, Mode, cache_dir
from .pipeline import Context
from .rules import RuleResolver


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
