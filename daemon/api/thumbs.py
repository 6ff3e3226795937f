"""Thumbnails for the review page: made on the fly, kept in a cache bounded in bytes and count.

A thumbnail is the image decoded under the same limits as the pipeline's *load* (formats,
size, pixels), turned upright, reduced to ``SIDE`` pixels on its long side and encoded as
JPEG. The cache is least-recently-used and keyed by path, size and mtime, so an image that
changes gets a new thumbnail and the old one ages out.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from daemon.config import ImageLimits
from daemon.errors import ImageError
from daemon.pipeline.load import decode_image
from daemon.pipeline.upload import pillow_formats

SIDE = 256
QUALITY = 82
AT_ONCE = 2  # thumbnails decoded at the same time (a large image needs its pixels in memory)

Key = tuple[str, int, int, int]  # path, size, mtime_ns, side


class ThumbCache:
    """LRU of encoded thumbnails, at most ``max_bytes`` in all and ``max_items`` entries."""

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._entries: OrderedDict[Key, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._making = threading.BoundedSemaphore(AT_ONCE)
        self.made = 0  # thumbnails encoded (cache misses)

    @property
    def size(self) -> tuple[int, int]:
        """(entries, bytes) held now."""
        with self._lock:
            return len(self._entries), self._bytes

    def get(self, key: Key) -> bytes | None:
        """The cached thumbnail, marked as recently used; None on a miss."""
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
            return data

    def put(self, key: Key, data: bytes) -> None:
        """Keep ``data``, dropping the least recently used entries beyond the bounds."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._entries[key] = data
            self._bytes += len(data)
            while self._entries and (
                self._bytes > self.max_bytes or len(self._entries) > self.max_items
            ):
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)

    def thumbnail(self, path: Path, limits: ImageLimits, side: int = SIDE) -> bytes:
        """The cached or freshly made thumbnail of ``path`` (``side`` pixels on its long side);
        ImageError when it cannot be read. At most AT_ONCE are decoded at a time."""
        try:
            st = path.stat()
        except OSError as exc:
            raise ImageError("the image is gone", path) from exc
        key = (str(path), st.st_size, st.st_mtime_ns, side)
        cached = self.get(key)
        if cached is not None:
            return cached
        with self._making:
            data = make_thumbnail(path, limits, side)
        self.made += 1
        self.put(key, data)
        return data


def make_thumbnail(path: Path, limits: ImageLimits, side: int = SIDE) -> bytes:
    """JPEG bytes of ``path`` reduced to ``side`` pixels on its long side (never enlarged)."""
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageError(f"too large for a preview ({size:,} bytes)", path)
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read the image ({exc.strerror or exc})", path) from exc
    image, _format = decode_image(data, path, limits.max_pixels, pillow_formats(limits.extensions))
    image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=QUALITY, optimize=True)
    return buffer.getvalue()
