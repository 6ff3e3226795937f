"""The test image set: small, deterministic images generated with Pillow.

``make_good_images`` covers every format and colour mode promptd must read;
``make_bad_images`` covers every way a file can fail to be an image;
``make_samples`` draws the two pleasant pictures shipped in ``inbox/samples``.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ORIENTATION_TAG = 0x0112
ROTATED_STORED_SIZE = (160, 90)  # rotated.jpg as stored; EXIF orientation 6 turns it to 90x160
GIF_FRAME_COLORS = ((220, 30, 30), (30, 160, 60), (40, 60, 220))  # animated.gif, frame by frame
ALPHA_DISC_COLOR = (20, 60, 200)  # the opaque disc in the middle of alpha.png
BOMB_SIDE = 20_000  # bomb.png's header claims 20000x20000, beyond Pillow's own limit
LARGE_HEADER_SIDE = 3_000  # large-header.png claims 3000x3000, beyond small_limits only
SMALL_MAX_PIXELS = 4_000_000  # the small_limits fixture's images.max_pixels


def scene(size: tuple[int, int], hue_shift: int = 0) -> Image.Image:
    """An RGB picture with structure: a diagonal gradient, a disc, a bar and a dark block."""
    width, height = size
    x = np.linspace(0.0, 1.0, width)[None, :]
    y = np.linspace(0.0, 1.0, height)[:, None]
    red = 40 + 180 * x + 0 * y
    green = 60 + 150 * y + 0 * x
    blue = 200 - 120 * (x + y) / 2 + hue_shift
    pixels = np.clip(np.stack((red, green, blue), axis=2), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    draw.ellipse(
        (width // 4, height // 4, width // 2, height // 2 + height // 8), fill=(250, 220, 40)
    )
    draw.rectangle((0, height - height // 6, width, height), fill=(245, 245, 245))
    draw.rectangle((width - width // 4, 0, width, height // 4), fill=(15, 15, 25))
    return image


def make_good_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Write one readable image per format and colour mode; name -> (width, height) once upright."""
    folder.mkdir(parents=True, exist_ok=True)
    scene((160, 120)).save(folder / "scene.png")
    scene((160, 100), hue_shift=30).save(folder / "photo.jpg", quality=90)
    scene((128, 96)).save(folder / "picture.webp", quality=85)
    scene((100, 80)).save(folder / "bitmap.bmp")
    scene((120, 90)).save(folder / "scan.tiff", compression="tiff_lzw")
    scene((120, 80)).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    scene((100, 100)).convert("L").save(folder / "gray.jpg", quality=90)
    _animated_gif(folder / "animated.gif", (96, 64))
    _sixteen_bit_png(folder / "deep.png", (100, 70))
    _rotated_jpeg(folder / "rotated.jpg")
    _alpha_png(folder / "alpha.png", (80, 80))
    _transparent_palette_png(folder / "palette.png", (96, 96))
    scene((64, 48)).convert("LA").save(folder / "gray-alpha.png")
    scene((72, 40)).convert("1").save(folder / "one-bit.png")
    return {
        "scene.png": (160, 120),
        "photo.jpg": (160, 100),
        "picture.webp": (128, 96),
        "bitmap.bmp": (100, 80),
        "scan.tiff": (120, 90),
        "cmyk.jpg": (120, 80),
        "gray.jpg": (100, 100),
        "animated.gif": (96, 64),
        "deep.png": (100, 70),
        "rotated.jpg": (ROTATED_STORED_SIZE[1], ROTATED_STORED_SIZE[0]),
        "alpha.png": (80, 80),
        "palette.png": (96, 96),
        "gray-alpha.png": (64, 48),
        "one-bit.png": (72, 40),
    }


def _animated_gif(path: Path, size: tuple[int, int]) -> None:
    """Three frames, each mostly one colour of GIF_FRAME_COLORS with a white bar."""
    frames = []
    for color in GIF_FRAME_COLORS:
        frame = Image.new("RGB", size, color)
        ImageDraw.Draw(frame).rectangle((0, 0, size[0], size[1] // 8), fill=(255, 255, 255))
        frames.append(frame.convert("P", palette=Image.Palette.ADAPTIVE, colors=8))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _sixteen_bit_png(path: Path, size: tuple[int, int]) -> None:
    """A 16-bit grey ramp (mode I;16) from 0 on the left to 65535 on the right."""
    ramp = np.linspace(0, 65535, size[0]).astype(np.uint16)
    values = np.ascontiguousarray(np.tile(ramp, (size[1], 1)))
    image = Image.new("I;16", size)
    image.frombytes(values.tobytes())
    image.save(path)


def _rotated_jpeg(path: Path) -> None:
    """Stored landscape with a red block at its top-left; EXIF orientation 6 shows it portrait."""
    image = scene(ROTATED_STORED_SIZE)
    ImageDraw.Draw(image).rectangle((0, 0, 30, 30), fill=(255, 0, 0))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    image.save(path, quality=90, exif=exif.tobytes())


def _alpha_png(path: Path, size: tuple[int, int]) -> None:
    """Fully transparent except an opaque disc of ALPHA_DISC_COLOR in the middle."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    width, height = size
    box = (width // 4, height // 4, width * 3 // 4, height * 3 // 4)
    ImageDraw.Draw(image).ellipse(box, fill=(*ALPHA_DISC_COLOR, 255))
    image.save(path)


def _transparent_palette_png(path: Path, size: tuple[int, int]) -> None:
    """A palette image whose index 0 is transparent (the left half) and index 1 opaque green."""
    image = Image.new("P", size, 0)
    image.putpalette([0, 0, 0, 30, 160, 60] + [0, 0, 0] * 254)
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0], size[1]), fill=1)
    image.save(path, transparency=0)


def make_bad_images(folder: Path) -> dict[str, str]:
    """Write files that are not usable images; name -> a word their error names (under small_limits)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "not-an-image.jpg").write_text("this is a shopping list, not a picture\n")
    (folder / "truncated.jpg").write_bytes(_cut(_encoded(scene((160, 120)), "JPEG"), 0.5))
    (folder / "truncated.png").write_bytes(_cut(_encoded(_noise((96, 96)), "PNG"), 0.5))
    (folder / "bomb.png").write_bytes(png_with_header_size(BOMB_SIDE, BOMB_SIDE))
    (folder / "large-header.png").write_bytes(
        png_with_header_size(LARGE_HEADER_SIDE, LARGE_HEADER_SIDE)
    )
    return {
        "empty.jpg": "empty",
        "not-an-image.jpg": "not an image",
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
        "bomb.png": "max_pixels",
        "large-header.png": "max_pixels",
    }


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny 1x1 greyscale PNG whose IHDR claims ``width`` x ``height`` (valid CRC)."""
    data = bytearray(_encoded(Image.new("L", (1, 1), 128), "PNG"))
    ihdr = 8  # the IHDR chunk follows the 8-byte signature: length, type, 13 bytes, CRC
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _noise(size: tuple[int, int]) -> Image.Image:
    """Seeded RGB noise: it does not compress, so half the file is half the pixels."""
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_samples(folder: Path) -> list[Path]:
    """Draw the shipped samples: ``sunset.jpg`` (a landscape) and ``still-life.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    sunset = folder / "sunset.jpg"
    still_life = folder / "still-life.png"
    _sunset((384, 256)).save(sunset, quality=85, optimize=True)
    _still_life((320, 384)).quantize(colors=64, dither=Image.Dither.NONE).save(
        still_life, optimize=True
    )
    return [sunset, still_life]


def _vertical_gradient(
    size: tuple[int, int], stops: list[tuple[float, tuple[int, int, int]]]
) -> Image.Image:
    """Colours interpolated between (position 0..1, RGB) stops from top to bottom."""
    width, height = size
    y = np.linspace(0.0, 1.0, height)
    positions = [position for position, _ in stops]
    channels = [np.interp(y, positions, [color[c] for _, color in stops]) for c in range(3)]
    column = np.stack(channels, axis=1)[:, None, :]
    return Image.fromarray(np.repeat(column, width, axis=1).astype(np.uint8))


def _disc(
    draw: ImageDraw.ImageDraw,
    center: tuple[float, float],
    radius: float,
    fill: int | tuple[int, int, int],
) -> None:
    """A filled circle."""
    x, y = center
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)


def _ridge(
    width: int, height: int, base: float, amplitude: float, phase: float
) -> list[tuple[float, float]]:
    """The outline of a mountain ridge: rounded peaks around ``base`` (a fraction of height)."""
    points = []
    for x in range(0, width + 8, 8):
        peaks = abs(math.sin(x / width * 5.0 + phase)) * (0.6 + 0.4 * math.sin(x / 17.0))
        points.append((float(x), height * (base - amplitude * peaks)))
    return points


def _sunset(size: tuple[int, int]) -> Image.Image:
    """A gradient sky, a glowing sun, two mountain ridges and a lake reflecting the light."""
    width, height = size
    horizon = int(height * 0.68)
    sky = [
        (0.0, (40, 30, 90)),
        (0.35, (190, 70, 110)),
        (0.6, (250, 150, 60)),
        (0.68, (255, 200, 110)),
        (1.0, (60, 40, 80)),
    ]
    image = _vertical_gradient(size, sky)
    sun, radius = (width * 0.62, height * 0.3), height * 0.08
    glow = Image.new("L", size, 0)
    _disc(ImageDraw.Draw(glow), sun, radius * 2.5, 120)
    image.paste((255, 220, 150), mask=glow.filter(ImageFilter.GaussianBlur(radius)))
    draw = ImageDraw.Draw(image)
    _disc(draw, sun, radius, (255, 236, 180))
    for base, amplitude, phase, color in (
        (0.52, 0.14, 0.0, (110, 60, 100)),
        (0.6, 0.1, 1.7, (60, 35, 70)),
    ):
        outline = _ridge(width, height, base, amplitude, phase)
        draw.polygon([*outline, (width, horizon), (0, horizon)], fill=color)
    lake = _vertical_gradient(
        (width, height - horizon), [(0.0, (200, 120, 90)), (1.0, (40, 30, 70))]
    )
    image.paste(lake, (0, horizon))
    for row in range(horizon + 4, height, 7):
        half = (row - horizon) * 0.3 + 4
        draw.line((sun[0] - half, row, sun[0] + half, row), fill=(235, 170, 120), width=1)
    return image.filter(ImageFilter.SMOOTH)


def _still_life(size: tuple[int, int]) -> Image.Image:
    """A blue vase and three fruits on a wooden table against a warm wall."""
    width, height = size
    table = int(height * 0.7)
    wall_and_table = [
        (0.0, (235, 222, 195)),
        (0.7, (205, 185, 150)),
        (0.7, (140, 85, 45)),
        (1.0, (90, 50, 25)),
    ]
    image = _vertical_gradient(size, wall_and_table)
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.12, table - 12, width * 0.88, table + 14), fill=(70, 40, 20))  # shadow
    vase_top = height * 0.3
    draw.ellipse((width * 0.36, height * 0.42, width * 0.6, table + 4), fill=(40, 90, 150))
    draw.rectangle((width * 0.43, vase_top, width * 0.53, height * 0.48), fill=(40, 90, 150))
    draw.ellipse((width * 0.41, vase_top - 6, width * 0.55, vase_top + 8), fill=(25, 60, 110))
    fruits = ((0.2, (210, 40, 40)), (0.72, (245, 150, 30)), (0.84, (120, 170, 50)))
    for index, (across, color) in enumerate(fruits):
        radius = width * (0.075 - index * 0.008)
        center = (width * across, table - radius + 6)
        _disc(draw, center, radius, color)
        _disc(
            draw,
            (center[0] - radius * 0.5, center[1] - radius * 0.5),
            radius * 0.3,
            (255, 240, 220),
        )
    return image.filter(ImageFilter.GaussianBlur(1.2))


if __name__ == "__main__":
    import sys

    make_samples(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("inbox/samples"))
