"""Small frozen records that flow between the pipeline stages (data only, no logic).

The bottom of the house with ``daemon.errors``: may import ``daemon.config.settings`` for the
types of a rule's settings, and nothing else of promptd.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from daemon.config.settings import Mode, RuleSettings

if TYPE_CHECKING:
    import torch

Status = Literal["ok", "degraded", "error"]
# ok/degraded/error: sidecars written. skipped: nothing to do. held: an invalid rule file
# governs it. retry: a transient failure (disk full) to try again later. failed: nothing could
# be recorded (an internal error); the image stays pending.
Outcome = Literal["ok", "degraded", "error", "skipped", "held", "retry", "failed"]


@dataclass(frozen=True)
class PaletteColor:
    """One entry of an image's named colour palette."""

    name: str  # e.g. "dark blue"
    hex: str  # "#1f3a93", the average of the pixels it names
    share: float  # fraction of pixels, 0..1


@dataclass(frozen=True)
class ImageStats:
    """Model-free pixel statistics."""

    width: int
    height: int
    orientation: Literal["landscape", "portrait", "square"]
    aspect_ratio: str  # nearest common ratio, "16:9", "1:1", ...
    brightness: float  # mean luminance, 0..1
    contrast: float  # RMS contrast (std of luminance), 0..1
    saturation: float  # mean HSV saturation, 0..1
    palette: tuple[PaletteColor, ...]  # most common first


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """An image read once, hashed and decoded to RGB, with its statistics."""

    path: Path
    sha256: str
    bytes: int
    mtime_ns: int
    format: str  # Pillow's format name: "JPEG", "PNG", ...
    width: int  # after EXIF orientation
    height: int
    image: Image.Image  # RGB
    stats: ImageStats


@dataclass(frozen=True)
class Scored:
    """A label with its zero-shot probability within its category."""

    label: str
    score: float


Analysis = Mapping[str, tuple[Scored, ...]]  # category -> top-k labels, best first


@dataclass(frozen=True, eq=False)
class Analyzed:
    """What CLIP made of one image: its analysis and the image embedding it was scored with,
    kept so a later stage (clip_prompt) needs no second vision forward."""

    analysis: Analysis
    embedding: torch.Tensor | None = None  # L2-normalised float32, CPU; None without CLIP


@dataclass(frozen=True)
class EffectiveRule:
    """The settings that apply to one image and where they came from."""

    settings: RuleSettings
    sources: tuple[Path, ...]  # config file first, then rule files from the root down
    fingerprint: str  # hash of the settings and the models that affect the result


@dataclass(frozen=True)
class Composition:
    """What the compose stage decided: the prompt text before the .txt line is assembled."""

    requested_mode: Mode
    mode: Mode  # the mode that produced this (``clip`` after a fallback)
    prompt: str  # English prompt, cleaned, not yet fitted or prefixed
    negative_prompt: str
    context: Mapping[str, Any] | None  # seed-001 fields when the mode produces them
    models: Mapping[str, str]  # role -> model name, e.g. {"llm": "llama3.2:latest"}
    degraded_reason: str | None = None  # set when a fallback produced this
    attempts: int = 1
    # Ollama's counts and times, summed over the attempts that got an answer (llm_load_ms,
    # llm_prompt_tokens, llm_prompt_ms, llm_output_tokens, llm_output_ms); empty without one.
    llm_timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClipPrompt:
    """The CLIP-Interrogator-style prompt of an image, or why it could not be built."""

    text: str | None
    reason: str | None = None  # set when text is None: the record is then degraded


@dataclass(frozen=True)
class Result:
    """The outcome of one image through the pipeline."""

    path: Path
    outcome: Outcome
    reason: str | None = None  # why skipped, degraded or failed
    mode: Mode | None = None
    sidecars: tuple[Path, ...] = ()
    timings_ms: Mapping[str, float] = field(default_factory=dict)
