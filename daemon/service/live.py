"""What the service's threads share: the config and the pipeline context a reload replaces.

Threads read ``live.config`` and ``live.ctx`` each time they need them, never keep their own
copies, so a SIGHUP reload reaches all of them at the next image. ``apply`` swaps the config,
the Ollama client and the context as one step (attribute assignment is atomic in CPython).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import structlog

from daemon.config import Config, cache_dir
from daemon.errors import PromptdError
from daemon.pipeline import Context
from daemon.pipeline.analyze.clip import ClipAnalyzer
from daemon.pipeline.backends import build_context
from daemon.pipeline.compose.client import OllamaLLM
from daemon.service.gpulock import GpuLock
from daemon.service.state import OllamaState

log = structlog.get_logger("promptd.service")


@dataclass
class Live:
    """The shared, replaceable part of a running service, and its stop and health flags."""

    config: Config
    gpu: GpuLock
    stop: threading.Event = field(default_factory=threading.Event)
    degraded_seen: threading.Event = field(default_factory=threading.Event)
    ollama_up: bool | None = None  # None until the first request or check says
    ctx: Context = field(init=False)
    llm: OllamaLLM = field(init=False)

    def __post_init__(self) -> None:
        self.apply(self.config)

    def apply(self, config: Config, analyzer: ClipAnalyzer | None = None) -> None:
        """Use ``config`` from now on; ``analyzer`` keeps a loaded CLIP across a reload."""
        analyzer = analyzer or ClipAnalyzer(config.clip, cache_dir(config), gpu_lock=self.gpu)
        llm = OllamaLLM(config.ollama, gpu_lock=self.gpu)
        ctx = build_context(config, gpu_lock=self.gpu, analyzer=analyzer, llm=llm)
        self.config, self.llm, self.ctx = config, llm, ctx

    @property
    def ollama_state(self) -> OllamaState:
        """``up``, ``down`` or ``unknown`` for the status file."""
        return "unknown" if self.ollama_up is None else ("up" if self.ollama_up else "down")

    def warm_up(self, *, skip_while_down: bool = True) -> None:
        """Load the Ollama model first, then CLIP: Ollama falls back to CPU if VRAM is taken.
        A model that is not there is noted, not fatal: with ``skip_while_down`` the composer
        skips Ollama for a while (degraded until the health thread sees it answer); without
        it (a distributed worker, which has no health thread) the first image tries again."""
        mode = self.config.defaults.mode
        if mode != "clip":
            model = getattr(self.config.ollama.models, mode)
            try:
                self.llm.preload(model)
                self.ollama_up = True
            except PromptdError as exc:
                self.ollama_up = False
                if skip_while_down:
                    self.degraded_seen.set()  # the health thread watches for Ollama's return
                    self.ctx.composer.mark_down(exc.message)
                log.warning("ollama_unavailable", model=model, error=str(exc))
        analyzer = self.ctx.analyzer
        if isinstance(analyzer, ClipAnalyzer):
            try:
                analyzer.load()
            except PromptdError as exc:
                log.error("clip_unavailable", error=str(exc))
