"""Read an image once, decode it safely to RGB, and measure it without any model.

``read_image`` is the pipeline's *load* stage: one read into memory (size checked
first), a sha256 of those bytes, a Pillow decode under the pixel limit, EXIF
orientation, the first frame of an animation, and RGB with alpha laid on white.
The statistics are measured by ``daemon.pipeline.stats``; ``encode_for_vision`` prepares
the JPEG a vision model receives.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from daemon.config import ImageLimits
from daemon.errors import ImageError
from daemon.pipeline.stats import compute_stats
from daemon.records import LoadedImage

VISION_MIN_SIDE = 64  # some vision models fail on images narrower than this
VISION_JPEG_QUALITY = 90

# Errors Pillow raises for damaged or truncated pixel data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the worker on open


def stat_signature(st: os.stat_result) -> tuple[int, int]:
    """The (size, mtime_ns) pair that says whether a file changed since it was read."""
    return st.st_size, st.st_mtime_ns


def read_image(path: Path, limits: ImageLimits) -> LoadedImage:
    """Read, hash, decode and measure one image; raise ``ImageError`` saying why it cannot be used."""
    data, st = _read_bytes(path, limits.max_bytes)
    image, image_format = decode_image(data, path, limits.max_pixels)
    return LoadedImage(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        mtime_ns=st.st_mtime_ns,
        format=image_format,
        width=image.width,
        height=image.height,
        image=image,
        stats=compute_stats(image),
    )


def _read_bytes(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """The whole file, read once, after checking its size with fstat on the open descriptor."""
    try:
        descriptor = os.open(path, os.O_RDONLY | _O_NONBLOCK)
    except PermissionError as exc:
        raise ImageError(
            "cannot read the file: permission denied; give the user promptd runs as read access",
            path,
        ) from exc
    except FileNotFoundError as exc:
        raise ImageError("the file is gone (moved or deleted before it was read)", path) from exc
    except OSError as exc:
        raise ImageError(f"cannot open the file: {exc.strerror or exc}", path) from exc
    with os.fdopen(descriptor, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("not a regular file, so not an image to describe", path)
        _check_size(st.st_size, max_bytes, path)
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(f"cannot read the file: {exc.strerror or exc}", path) from exc
    _check_size(len(data), max_bytes, path)  # it may have changed since fstat
    return data, st


def _check_size(size: int, max_bytes: int, path: Path) -> None:
    if size == 0:
        raise ImageError(
            "the file is empty (0 bytes); nothing to describe until it holds an image", path
        )
    if size > max_bytes:
        raise ImageError(
            f"file too large: {size:,} bytes is above images.max_bytes ({max_bytes:,}); "
            "raise images.max_bytes in config.yaml to accept it",
            path,
        )


def decode_image(
    data: bytes, path: Path, max_pixels: int, formats: Sequence[str] | None = None
) -> tuple[Image.Image, str]:
    """Decode bytes to an oriented RGB image (first frame) and Pillow's format name.

    ``formats`` (Pillow format names) restricts which decoders may try the bytes; None lets
    Pillow try all it has.
    The pixel count is checked from the header before any pixel is decoded. Pillow's
    own bomb warning (for images between its limit and ours) is silenced only around
    this decode; Pillow's hard limit (twice ``Image.MAX_IMAGE_PIXELS``) still applies.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            source = Image.open(
                io.BytesIO(data), formats=None if formats is None else tuple(formats)
            )
        except UnidentifiedImageError as exc:
            raise ImageError(
                "not an image: Pillow cannot identify the format (wrong extension or damaged file?)",
                path,
            ) from exc
        except Image.DecompressionBombError as exc:
            raise _refused_by_pillow(path, max_pixels, exc) from exc
        except _DECODE_ERRORS as exc:
            raise ImageError(f"corrupt image header: {exc}", path) from exc
        with source:
            width, height = source.size
            if width * height > max_pixels:
                raise _too_many_pixels(
                    path, max_pixels, detail=f"{width}x{height} is {width * height:,} pixels"
                )
            try:
                source.load()  # the first frame of an animation
                oriented = _oriented(source)
                return _to_rgb(oriented), source.format or "unknown"
            except Image.DecompressionBombError as exc:
                raise _refused_by_pillow(path, max_pixels, exc) from exc
            except _DECODE_ERRORS as exc:
                raise ImageError(
                    f"truncated or corrupt image data ({exc}); copy or export the file again", path
                ) from exc


def _too_many_pixels(path: Path, max_pixels: int, detail: str) -> ImageError:
    return ImageError(
        f"too many pixels: {detail}, above images.max_pixels ({max_pixels:,}); "
        "raise images.max_pixels in config.yaml if the image is genuine",
        path,
    )


def _refused_by_pillow(path: Path, max_pixels: int, exc: Exception) -> ImageError:
    return ImageError(
        f"too many pixels: Pillow refuses it as a possible decompression bomb ({exc}); "
        f"images.max_pixels ({max_pixels:,}) cannot lift Pillow's own limit",
        path,
    )


def _oriented(image: Image.Image) -> Image.Image:
    """A copy turned upright by its EXIF orientation; a broken EXIF block leaves it as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, KeyError, TypeError, struct.error):
        return image.copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB: 16-bit and float scaled to 8 bits, transparency laid on white."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _eight_bit(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _eight_bit(image: Image.Image) -> Image.Image:
    """Grey levels of a 16-bit, 32-bit or float image mapped onto 0..255 (mode ``L``).

    16-bit data keeps its high byte; 32-bit integers within 0..255 are kept as they
    are, larger ones are read as 16-bit; floats within 0..1 are stretched to 0..255.
    Arrays stay in the image's own width so a large scan is not copied at 8 bytes a pixel.
    """
    values = np.asarray(image)
    top = values.max() if values.size else 0
    if image.mode == "F":
        scale = 255.0 if top <= 1.0 else (255.0 / 65535.0 if top > 255.0 else 1.0)
        return Image.fromarray(np.clip(values * np.float32(scale), 0, 255).astype(np.uint8))
    if image.mode == "I" and top <= 255:
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
    if image.mode == "I":
        values = np.clip(values, 0, 65535)
    return Image.fromarray((values >> 8).astype(np.uint8))


def encode_for_vision(img: Image.Image, long_side: int) -> bytes:
    """JPEG bytes of ``img`` with its long side at most ``long_side`` and its short side at least 64.

    Large images are reduced, never enlarged, except that a side below 64 pixels is
    enlarged to 64 (small images crash some vision models). Where both cannot hold
    (a strip thinner than ``long_side / 64``), the long side wins and the short side
    is padded with white to 64 pixels.
    """
    width, height = img.size
    scale = min(1.0, long_side / max(width, height))
    if min(width, height) * scale < VISION_MIN_SIDE:
        scale = min(VISION_MIN_SIDE / min(width, height), long_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = img if img.mode == "RGB" else _to_rgb(img)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if min(size) < VISION_MIN_SIDE:
        canvas = Image.new(
            "RGB", (max(size[0], VISION_MIN_SIDE), max(size[1], VISION_MIN_SIDE)), "white"
        )
        canvas.paste(rgb, ((canvas.width - size[0]) // 2, (canvas.height - size[1]) // 2))
        rgb = canvas
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=VISION_JPEG_QUALITY)
    return buffer.getvalue()
