"""Model-free pixel statistics and the English phrase that describes them.

Everything here is pure and cheap: the image is reduced to a thumbnail of at most
``THUMBNAIL_SIDE`` pixels a side, then measured with numpy. Luminance uses the
Rec. 709 weights on the stored (gamma-encoded) values; colours are named by the
nearest entry of a fixed table in OKLab.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from daemon.records import ImageStats, PaletteColor

FloatArray = npt.NDArray[np.float64]

THUMBNAIL_SIDE = 64
SAMPLE_SIDE = 4 * THUMBNAIL_SIDE  # larger images are sampled to this before averaging
PALETTE_SIZE = 5  # most colours reported
PALETTE_MIN_SHARE = 0.03  # a colour must cover this fraction of the image to be reported
SQUARE_TOLERANCE = 0.05  # sides within 5% of each other count as square

# Common ratios, long side first; portrait images get the inverse ("9:16").
ASPECT_RATIOS: tuple[tuple[int, int], ...] = (
    (1, 1), (5, 4), (4, 3), (3, 2), (16, 10), (16, 9), (2, 1), (21, 9),
)  # fmt: skip

NAMED_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (0, 0, 0)),
    ("dark gray", (72, 72, 72)),
    ("gray", (128, 128, 128)),
    ("light gray", (192, 192, 192)),
    ("white", (255, 255, 255)),
    ("red", (220, 20, 30)),
    ("dark red", (128, 0, 0)),
    ("orange", (255, 140, 0)),
    ("brown", (130, 80, 40)),
    ("beige", (225, 205, 160)),
    ("yellow", (250, 225, 30)),
    ("olive", (128, 128, 0)),
    ("green", (40, 170, 50)),
    ("dark green", (0, 90, 30)),
    ("teal", (0, 128, 128)),
    ("cyan", (0, 220, 230)),
    ("light blue", (135, 190, 235)),
    ("blue", (40, 100, 210)),
    ("dark blue", (30, 60, 140)),
    ("navy", (5, 10, 90)),
    ("purple", (120, 50, 160)),
    ("dark purple", (70, 30, 90)),
    ("magenta", (230, 0, 200)),
    ("pink", (250, 150, 190)),
)

_LUMA = np.array([0.2126, 0.7152, 0.0722])
_RGB_TO_LMS = np.array(
    [
        [0.4122214708, 0.5363325363, 0.0514459929],
        [0.2119034982, 0.6806995451, 0.1073969566],
        [0.0883024619, 0.2817188376, 0.6299787005],
    ]
)
_LMS_TO_OKLAB = np.array(
    [
        [0.2104542553, 0.7936177850, -0.0040720468],
        [1.9779984951, -2.4285922050, 0.4505937099],
        [0.0259040371, 0.7827717662, -0.8086757660],
    ]
)


def srgb_to_oklab(rgb: FloatArray) -> FloatArray:
    """OKLab coordinates of sRGB colours given as an (n, 3) array of 0..1 values.

    OKLab keeps hues straight where CIE Lab bends pure blue towards purple, so the
    nearest named colour matches what a person would call it.
    """
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return np.asarray(np.cbrt(linear @ _RGB_TO_LMS.T) @ _LMS_TO_OKLAB.T, dtype=np.float64)


# Chroma (a, b) counts double against lightness when naming a colour: without it a
# vivid green is called "yellow" and a pale pink "beige".
_NAMING_WEIGHTS = np.array([1.0, 2.0, 2.0])
_NAMED_POINTS = (
    srgb_to_oklab(np.array([rgb for _, rgb in NAMED_COLORS], dtype=np.float64) / 255.0)
    * _NAMING_WEIGHTS
)
_NAMED_NORMS = (_NAMED_POINTS**2).sum(axis=1)


def compute_stats(image: Image.Image) -> ImageStats:
    """Brightness, contrast, saturation, shape and named palette of an RGB image."""
    width, height = image.size
    rgb = _thumbnail_pixels(image)
    luma = rgb @ _LUMA
    top, bottom = rgb.max(axis=1), rgb.min(axis=1)
    saturation = np.where(top > 0, (top - bottom) / np.maximum(top, 1e-9), 0.0)
    return ImageStats(
        width=width,
        height=height,
        orientation=orientation_of(width, height),
        aspect_ratio=aspect_ratio_of(width, height),
        brightness=round(float(luma.mean()), 4),
        contrast=round(float(luma.std()), 4),
        saturation=round(float(saturation.mean()), 4),
        palette=palette_of(rgb),
    )


def _thumbnail_pixels(image: Image.Image) -> FloatArray:
    """The image reduced (never enlarged) to at most THUMBNAIL_SIDE a side, as (n, 3) floats 0..1.

    A large image is first sampled (nearest neighbour) down to SAMPLE_SIDE, which
    keeps every statistic an unbiased estimate while costing about a millisecond
    instead of a pass over every pixel; box averaging then makes the thumbnail.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if max(rgb.size) > SAMPLE_SIDE:
        rgb = rgb.resize(_fit(rgb.size, SAMPLE_SIDE), Image.Resampling.NEAREST)
    size = _fit(rgb.size, THUMBNAIL_SIDE)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BOX)
    return np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    """``size`` scaled down (never up) so that its long side is at most ``side``."""
    scale = min(1.0, side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def orientation_of(width: int, height: int) -> Literal["landscape", "portrait", "square"]:
    """``square`` when the sides are within 5% of each other, else the longer side decides."""
    if abs(width - height) <= SQUARE_TOLERANCE * max(width, height):
        return "square"
    return "landscape" if width > height else "portrait"


def aspect_ratio_of(width: int, height: int) -> str:
    """The nearest common ratio (compared in log space), written "16:9" or "9:16"."""
    long_side, short_side = max(width, height, 1), max(min(width, height), 1)
    target = math.log(long_side / short_side)
    first, second = min(
        ASPECT_RATIOS, key=lambda ratio: abs(math.log(ratio[0] / ratio[1]) - target)
    )
    return f"{first}:{second}" if width >= height else f"{second}:{first}"


def palette_of(rgb: FloatArray) -> tuple[PaletteColor, ...]:
    """Up to PALETTE_SIZE named colours covering at least PALETTE_MIN_SHARE, most common first."""
    points = srgb_to_oklab(rgb) * _NAMING_WEIGHTS
    # Nearest by squared distance; each pixel's own |p|^2 does not change which name wins.
    nearest = np.argmin(_NAMED_NORMS - 2.0 * points @ _NAMED_POINTS.T, axis=1)
    counts = np.bincount(nearest, minlength=len(NAMED_COLORS))
    sums = np.stack(
        [np.bincount(nearest, weights=rgb[:, c], minlength=len(NAMED_COLORS)) for c in range(3)],
        axis=1,
    )
    ranked = sorted(range(len(NAMED_COLORS)), key=lambda index: (-int(counts[index]), index))
    palette = []
    for index in ranked[:PALETTE_SIZE]:
        share = int(counts[index]) / len(rgb)
        if share < PALETTE_MIN_SHARE:
            break
        red, green, blue = (round(float(v) * 255.0) for v in sums[index] / counts[index])
        palette.append(
            PaletteColor(
                NAMED_COLORS[index][0], f"#{red:02x}{green:02x}{blue:02x}", round(share, 4)
            )
        )
    return tuple(palette)


def describe_stats(stats: ImageStats) -> str:
    """A short deterministic phrase, e.g. "bright, muted landscape image (16:9) dominated by white and gray"."""
    words = [
        _band(stats.brightness, ((0.25, "dark"), (0.4, "dim"), (0.7, ""), (2.0, "bright"))),
        _band(stats.contrast, ((0.12, "low-contrast"), (0.28, ""), (2.0, "high-contrast"))),
        _band(
            stats.saturation, ((0.05, "monochrome"), (0.25, "muted"), (0.55, ""), (2.0, "vivid"))
        ),
    ]
    adjectives = ", ".join(word for word in words if word)
    shape = f"{stats.orientation} image ({stats.aspect_ratio})"
    phrase = f"{adjectives} {shape}" if adjectives else shape
    names = [color.name for color in stats.palette[:3]]
    if not names:
        return phrase
    colours = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{phrase} dominated by {colours}"


def _band(value: float, bands: tuple[tuple[float, str], ...]) -> str:
    """The word of the first band whose upper bound exceeds ``value``."""
    return next(word for bound, word in bands if value < bound)
