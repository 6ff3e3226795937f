"""What goes into CLIP and what comes out, as pure functions: the image trimmed to a shape the
preprocessing can afford, and the top labels of a table."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from daemon.records import Scored

MAX_ASPECT = 8  # longer images are trimmed to their middle before preprocessing


def top_labels(labels: Sequence[str], probs: Sequence[float], k: int) -> tuple[Scored, ...]:
    """The ``k`` most probable labels, best first (ties keep table order), scores to 4 places."""
    order = sorted(range(len(labels)), key=lambda i: -probs[i])[:k]
    return tuple(Scored(labels[i], round(float(probs[i]), 4)) for i in order)


def clip_input(image: Image.Image, max_ratio: int = MAX_ASPECT) -> Image.Image:
    """The image as RGB; of an extreme panorama only the middle, ``max_ratio`` times as long as wide.

    CLIP's preprocessing scales the short side to the model's size and keeps the centre square,
    so trimming the far ends changes nothing it sees, but stops a 2x100000 image from being
    resized to a multi-gigabyte array first.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    keep = min(width, height) * max_ratio
    if width > keep:
        left = (width - keep) // 2
        return rgb.crop((left, 0, left + keep, height))
    if height > keep:
        top = (height - keep) // 2
        return rgb.crop((0, top, width, top + keep))
    return rgb
