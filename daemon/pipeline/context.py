"""What every stage is handed: the config, the rule resolver and the backends, built once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from daemon.config import Config, Mode
from daemon.config.rules import RuleResolver
from daemon.pipeline.compose.modes import Composer
from daemon.records import Analysis, Analyzed

if TYPE_CHECKING:
    import torch


class Analyzer(Protocol):
    """What the pipeline needs from CLIP (daemon.analysis.clip.ClipAnalyzer)."""

    @property
    def model_id(self) -> str: ...

    def analyze(self, images: Sequence[Image.Image]) -> list[Analysis]: ...

    def analyze_embedded(self, images: Sequence[Image.Image]) -> list[Analyzed]: ...

    def clip_prompt(self, caption: str, embedding: torch.Tensor) -> str: ...

    def count_tokens(self, text: str) -> int: ...


@dataclass(frozen=True)
class Context:
    """Everything the stages need, built once by the CLI or the service."""

    config: Config
    rules: RuleResolver
    analyzer: Analyzer | None
    composer: Composer
    mode_override: Mode | None = None
