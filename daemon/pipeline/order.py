"""Which Ollama model an image will use, and orders that spare the model reloads.

A small GPU holds one Ollama model; every switch between models costs a load of seconds and
the prompt cache. The service's queue groups its images by ``model_for`` (lanes, bounded by
``ollama.switch_after_s``); `promptd process` sorts its paths with ``by_model``. CLIP may run
ahead of the LLM only when it cannot take the GPU from it (``clip_may_run_ahead``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from daemon.config.rules import llm_model
from daemon.errors import PromptdError
from daemon.pipeline.context import Context


def model_for(path: Path, ctx: Context) -> str | None:
    """The Ollama model ``path``'s rule sends it to; None for ``clip`` mode, and for a path
    no valid rule governs (it ends skipped or held, without the LLM)."""
    try:
        mode = ctx.mode_override or ctx.rules.resolve(path).settings.mode
    except PromptdError:
        return None
    return llm_model(mode, ctx.config.ollama.models)


def by_model(paths: Sequence[Path], ctx: Context) -> list[Path]:
    """``paths`` grouped by model, models in order of first appearance, each group in its
    original order (a stable sort); with ``switch_after_s`` 0, unchanged."""
    if ctx.config.ollama.switch_after_s <= 0:
        return list(paths)
    rank: dict[str | None, int] = {}
    keyed = [(rank.setdefault(model_for(p, ctx), len(rank)), i, p) for i, p in enumerate(paths)]
    return [p for _, _, p in sorted(keyed)]


def clip_may_run_ahead(ctx: Context) -> bool:
    """Whether CLIP may work on the next images while the LLM works: ``gpu.exclusive`` off,
    or CLIP on the CPU (an analyzer that does not say where it runs counts as a GPU one)."""
    if not ctx.config.gpu.exclusive:
        return True
    return str(getattr(ctx.analyzer, "device", "cuda")) == "cpu"
