"""CLIP zero-shot label tables: seed 000's five built-in tables and the user's additions.

Each label's own text is what CLIP encodes (no "a photo of ..." template), exactly as the seed
does, so scores stay comparable with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from daemon.config import LabelSettings
from daemon.errors import ConfigError

LabelTables = dict[str, tuple[str, ...]]

DEFAULT_TABLES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "style": (
            "photorealistic",
            "digital art",
            "watercolor",
            "oil painting",
            "sketch",
            "3D render",
            "anime",
            "cartoon",
            "pixel art",
            "comic book style",
            "vintage",
            "modern",
        ),
        "mood": (
            "calm",
            "energetic",
            "melancholic",
            "joyful",
            "mysterious",
            "dramatic",
            "peaceful",
            "tense",
            "romantic",
            "dark",
        ),
        "composition": (
            "centered subject",
            "rule of thirds",
            "diagonal composition",
            "symmetrical",
            "asymmetrical",
            "leading lines",
            "depth",
            "close-up",
            "wide angle",
            "aerial view",
        ),
        "color_palette": (
            "warm tones",
            "cool tones",
            "vibrant colors",
            "muted colors",
            "monochrome",
            "pastel",
            "high contrast",
            "low contrast",
            "earth tones",
            "neon colors",
        ),
        "subjects": (
            "portrait",
            "landscape",
            "still life",
            "nature",
            "animals",
            "people",
            "architecture",
            "abstract",
            "food",
            "objects",
            "seascape",
            "forest",
            "mountains",
            "urban",
            "indoor",
        ),
    }
)


def unique_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Labels stripped of surrounding blanks, empty ones and repeats dropped, first order kept."""
    seen: dict[str, None] = {}
    for label in labels:
        text = " ".join(label.split())
        if text:
            seen.setdefault(text, None)
    return tuple(seen)


def label_tables(settings: LabelSettings) -> LabelTables:
    """The tables CLIP scores against: the defaults extended by ``settings.tables``, or replaced.

    With ``replace`` only ``settings.tables`` count. Otherwise a table named like a default one
    adds its new labels after the built-in ones; any other name adds a table after the defaults.
    Raises ConfigError when a table ends up empty or there is no table at all.
    """
    tables: LabelTables = {} if settings.replace else dict(DEFAULT_TABLES)
    for name, labels in settings.tables.items():
        merged = unique_labels((*tables.get(name, ()), *labels))
        if not merged:
            raise ConfigError(
                f"clip.labels.tables.{name} has no labels: list at least one label or remove it"
            )
        tables[name] = merged
    if not tables:
        raise ConfigError(
            "clip.labels.replace is true but clip.labels.tables is empty: "
            "add at least one table or set replace to false"
        )
    return tables
