"""Settings: frozen pydantic models, built once from config.yaml and passed in.

Every field has a description and a default; the models are the documentation of
config.yaml (``promptd check-config`` reports problems against them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from daemon.config.apisettings import ApiSettings
from daemon.config.distributed import DistributedSettings
from daemon.config.vocabulary import vocabulary_sources

Mode = Literal["speed", "quality", "vision", "clip"]
MODES: tuple[Mode, ...] = ("speed", "quality", "vision", "clip")
HINT_MAX_CHARS = 1000  # a few sentences; the rest of the prompt must stay the larger part
ManifestFormat = Literal["hf", "kohya"]


class Frozen(BaseModel):
    """Base for every settings model: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RuleSettings(Frozen):
    """What a folder's rule decides; `defaults` in config.yaml and `.promptd.yaml` files hold these keys."""

    mode: Mode = Field("speed", description="speed | quality | vision | clip (no LLM)")
    language: str = Field(
        "English", description="Language of the descriptive fields; the prompt itself is English"
    )
    outputs: tuple[Literal["txt", "json"], ...] = Field(
        ("txt", "json"), min_length=1, description="Which sidecars to write"
    )
    naming: Literal["stem", "filename"] = Field(
        "stem", description="stem: photo.txt; filename: photo.jpg.txt"
    )
    trigger_words: tuple[str, ...] = Field(
        (), description="Written first in the .txt, never trimmed (kohya keep_tokens)"
    )
    prefix: str = Field("", description="Text placed after the trigger words, before the prompt")
    suffix: str = Field("", description="Text placed after the prompt")
    negative_prompt: str = Field(
        "", description="Extra negative terms, placed before the model's own negative prompt"
    )
    max_prompt_tokens: int = Field(
        75, ge=8, le=1000, description="Fit the .txt to this many CLIP tokens (SD's window is 75+2)"
    )
    existing_caption: Literal["keep", "overwrite"] = Field(
        "keep", description="A .txt promptd did not write: keep it (default) or overwrite it"
    )
    hint: str = Field(
        "",
        max_length=HINT_MAX_CHARS,
        description="The user's own instructions for the LLM (seed 000's user prompt), e.g. "
        "'all photos show the Acme Runner shoe; name the colourway'; unused in clip mode",
    )
    clip_prompt: bool = Field(
        False, description="Also build a CLIP-Interrogator-style prompt (the record's clip_prompt)"
    )
    caption_from: Literal["prompt", "clip_prompt"] = Field(
        "prompt", description="What the .txt is built from: the mode's prompt, or clip_prompt"
    )
    tag_threshold: float = Field(
        0.1, ge=0, le=1, description="CLIP labels scoring at least this become the record's tags"
    )
    manifests: tuple[ManifestFormat, ...] = Field(
        (),
        description="Dataset manifests this folder keeps for every image below it: hf "
        "(metadata.jsonl) and/or kohya (metadata_kohya.json)",
    )

    @model_validator(mode="before")
    @classmethod
    def _deep_thinking(cls, data: Any) -> Any:
        """Accept seed 000's `deep_thinking: true` as `mode: quality`."""
        if isinstance(data, dict) and "deep_thinking" in data:
            data = dict(data)
            deep = data.pop("deep_thinking")
            if not isinstance(deep, bool):
                raise ValueError("deep_thinking must be true or false")
            if "mode" not in data:
                data["mode"] = "quality" if deep else "speed"
        return data

    @field_validator("trigger_words", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class LabelSettings(Frozen):
    """CLIP zero-shot label tables (seed 000's five tables are built in)."""

    replace: bool = Field(
        False, description="true: use only `tables`; false: add `tables` to the built-in ones"
    )
    tables: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="category -> labels; extends or replaces the defaults"
    )
    top_k: int = Field(3, ge=1, le=20, description="Labels kept per category, ranked by score")


class ClipSettings(Frozen):
    """The CLIP model used for zero-shot analysis."""

    model: str = Field(
        "openai/clip-vit-base-patch32", description="Hugging Face hub id or a local folder"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    batch_size: int = Field(8, ge=1, le=256, description="Images per CLIP forward pass")
    offline: bool = Field(
        False, description="Never contact the model hub (only the local cache or folder)"
    )
    labels: LabelSettings = Field(default_factory=LabelSettings)  # type: ignore[arg-type]
    vocabularies: dict[str, str] = Field(
        default_factory=dict,
        description="clip_prompt's phrase tables, merged over promptd's own: table -> builtin | "
        "off | a text file with one phrase per line",
    )
    chain_steps: int = Field(
        2, ge=0, le=32, description="clip_prompt: most phrases the greedy chain adds (0: none)"
    )
    chain_width: int = Field(
        4, ge=1, le=64, description="clip_prompt: candidate prompts encoded per chain step"
    )

    _vocabularies = field_validator("vocabularies", mode="before")(vocabulary_sources)


class OllamaModels(Frozen):
    """Which Ollama model serves each mode."""

    speed: str = Field("llama3.2:latest", description="Fast text model for `speed`")
    quality: str = Field("mistral:latest", description="Larger text model for `quality`")
    vision: str = Field("gemma3:4b", description="Vision-capable model for `vision`")


class OllamaTimeouts(Frozen):
    """HTTP timeouts for Ollama (the client default is none at all)."""

    connect_s: float = Field(5.0, gt=0, description="Seconds to establish the connection")
    read_s: float = Field(300.0, gt=0, description="Seconds to wait for the answer")


class ModeNumbers(Frozen):
    """A number per LLM mode."""

    speed: float
    quality: float
    vision: float


class OllamaSettings(Frozen):
    """How promptd talks to Ollama."""

    host: str | None = Field(
        None, description="Server URL; unset means $OLLAMA_HOST, then http://127.0.0.1:11434"
    )
    models: OllamaModels = Field(default_factory=OllamaModels)  # type: ignore[arg-type]
    timeout: OllamaTimeouts = Field(default_factory=OllamaTimeouts)  # type: ignore[arg-type]
    keep_alive: str | float = Field("30m", description="How long Ollama keeps a model loaded")
    retries: int = Field(3, ge=0, le=20, description="Retries for a busy or unreachable server")
    backoff_s: float = Field(2.0, ge=0, description="First retry delay; doubles each time")
    num_predict: ModeNumbers = Field(
        default_factory=lambda: ModeNumbers(speed=400, quality=1200, vision=1200),
        description="Token budget per mode; large enough for the JSON around the prompt",
    )
    max_answer_bytes: int = Field(
        256 * 1024,
        ge=4096,
        description="Most bytes read of one answer (about 16 per num_predict token, up to this); "
        "a longer one counts as cut off",
    )
    temperature: ModeNumbers = Field(
        default_factory=lambda: ModeNumbers(speed=0.5, quality=0.7, vision=0.2),
        description="Sampling temperature per mode (seed 000: 0.5 / 0.7; seed 001: 0.2)",
    )
    num_ctx: int | None = Field(
        None, ge=512, description="Context window; unset keeps the server's default"
    )
    switch_after_s: float = Field(
        30.0,
        ge=0,
        description="Keep using the loaded model until an image for another waits this long "
        "(0: plain arrival order)",
    )
    parallel: int = Field(
        1, ge=1, le=8, description="Compose requests in flight at once (OLLAMA_NUM_PARALLEL >= it)"
    )


class ImageLimits(Frozen):
    """What counts as an image and how big it may be."""

    extensions: tuple[str, ...] = Field(
        (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"),
        description="File endings treated as images (case-insensitive)",
    )
    max_bytes: int = Field(200 * 1024 * 1024, ge=1, description="Larger files are refused")
    max_pixels: int = Field(
        100_000_000, ge=1, description="Larger images are refused (decompression bombs)"
    )
    vision_long_side: int = Field(
        1024, ge=64, le=4096, description="Images sent to a vision model are resized to this"
    )
    ignore: tuple[str, ...] = Field(
        (), description="Extra glob patterns (file or folder names) to ignore"
    )


class WatchSettings(Frozen):
    """How `promptd run` notices new and changed images."""

    mode: Literal["auto", "inotify", "polling"] = Field(
        "auto", description="auto picks polling on network filesystems"
    )
    settle_s: float = Field(2.0, ge=0, description="Quiet time before a file counts as complete")
    quiet_s: float = Field(
        0.2, ge=0, description="Quiet time after a close-after-write or rename (inotify)"
    )
    rescan_interval_s: float = Field(300.0, ge=1, description="Full rescan period")
    poll_interval_s: float = Field(5.0, ge=0.1, description="Polling observer period")
    queue_size: int = Field(1024, ge=1, description="Most paths waiting in memory at once")
    stop_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long to let the image in hand finish"
    )
    recheck_s: float = Field(
        5.0, gt=0, description="First wait before checking whether Ollama is back (doubles)"
    )
    manifest_interval_s: float = Field(
        3.0, ge=0.1, description="Least time between two rewrites of one folder's manifests"
    )
    stuck_after_s: float | None = Field(
        None,
        gt=0,
        description="An image in hand longer than this means the worker is stuck: the systemd "
        "watchdog ping stops; unset: derived from the Ollama timeouts and retries",
    )


class GpuSettings(Frozen):
    """Sharing one small GPU between CLIP and Ollama."""

    exclusive: bool = Field(True, description="CLIP and Ollama take turns through one lock")


class LogSettings(Frozen):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON otherwise"
    )


class Config(Frozen):
    """The whole of config.yaml."""

    inbox: tuple[Path, ...] = Field(
        (Path("inbox"),), min_length=1, description="Folders to watch (relative to config.yaml)"
    )
    cache_dir: Path | None = Field(
        None, description="Text-embedding cache; unset means $XDG_CACHE_HOME/promptd"
    )
    state_dir: Path | None = Field(
        None, description="Where `promptd run` keeps its status file; unset: cache_dir"
    )
    clip: ClipSettings = Field(default_factory=ClipSettings)  # type: ignore[arg-type]
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)  # type: ignore[arg-type]
    images: ImageLimits = Field(default_factory=ImageLimits)  # type: ignore[arg-type]
    watch: WatchSettings = Field(default_factory=WatchSettings)  # type: ignore[arg-type]
    gpu: GpuSettings = Field(default_factory=GpuSettings)  # type: ignore[arg-type]
    log: LogSettings = Field(default_factory=LogSettings)  # type: ignore[arg-type]
    defaults: RuleSettings = Field(default_factory=RuleSettings)  # type: ignore[arg-type]
    distributed: DistributedSettings = Field(default_factory=DistributedSettings)  # type: ignore[arg-type]
    api: ApiSettings = Field(default_factory=ApiSettings)  # type: ignore[arg-type]
    source: Path | None = Field(None, description="(set by the loader) the file this came from")

    @field_validator("inbox", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value
