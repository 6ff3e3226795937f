"""Reading, decoding, measuring and re-encoding images (daemon.imaging)."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from daemon.config import ImageLimits
from daemon.errors import ImageError
from daemon.pipeline.load import encode_for_vision, read_image
from daemon.pipeline.stats import compute_stats, describe_stats
from daemon.records import ImageStats, PaletteColor
from tests.images import (
    ALPHA_DISC_COLOR,
    GIF_FRAME_COLORS,
    make_samples,
    png_with_header_size,
)

REPO = Path(__file__).resolve().parent.parent
GoodImages = tuple[Path, dict[str, tuple[int, int]]]


def close_to(pixel: object, expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    """True when an RGB pixel is within ``tolerance`` of ``expected`` on every channel."""
    assert isinstance(pixel, tuple)
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def test_read_image_good_images_load_as_rgb_with_upright_size(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """Every format and colour mode of the test set decodes to RGB at its upright size."""
    folder, expected = good_images
    loaded = {name: read_image(folder / name, small_limits) for name in expected}
    assert {name: (image.image.mode, image.image.size) for name, image in loaded.items()} == {
        name: ("RGB", size) for name, size in expected.items()
    }
    assert all((image.width, image.height) == image.image.size for image in loaded.values())


def test_read_image_format_is_pillows_format_name(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """The recorded format is Pillow's name for the decoder, not the file's extension."""
    folder, _ = good_images
    names = ("scene.png", "photo.jpg", "picture.webp", "animated.gif", "bitmap.bmp", "scan.tiff")
    formats = [read_image(folder / name, small_limits).format for name in names]
    assert formats == ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]


def test_read_image_hash_size_and_mtime_come_from_the_file(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """sha256, byte count and mtime_ns describe the file exactly as it is on disk."""
    path = good_images[0] / "photo.jpg"
    loaded = read_image(path, small_limits)
    data = path.read_bytes()
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.bytes == len(data)
    assert loaded.mtime_ns == path.stat().st_mtime_ns
    assert loaded.path == path


def test_read_image_exif_orientation_six_turns_the_picture_upright(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """Orientation 6 rotates clockwise: the stored top-left red block ends up top-right."""
    loaded = read_image(good_images[0] / "rotated.jpg", small_limits)
    assert loaded.image.size == (90, 160)
    assert close_to(loaded.image.getpixel((loaded.width - 5, 5)), (255, 0, 0), tolerance=30)
    assert not close_to(loaded.image.getpixel((5, 5)), (255, 0, 0), tolerance=60)
    assert (loaded.stats.width, loaded.stats.height, loaded.stats.orientation) == (
        90,
        160,
        "portrait",
    )


def test_read_image_sixteen_bit_png_is_scaled_to_eight_bits(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """A 16-bit grey ramp stays a ramp (black to white), not a clipped all-white image."""
    image = read_image(good_images[0] / "deep.png", small_limits).image
    left, middle, right = (image.getpixel((x, 35)) for x in (0, 50, 99))
    assert close_to(left, (0, 0, 0), tolerance=2)
    assert close_to(middle, (128, 128, 128), tolerance=4)
    assert close_to(right, (255, 255, 255), tolerance=2)


@pytest.mark.parametrize(("mode", "top"), [("I", 65535), ("I", 255), ("F", 1.0), ("F", 255.0)])
def test_read_image_wide_grey_tiffs_are_scaled_to_eight_bits(
    tmp_path: Path, small_limits: ImageLimits, mode: str, top: float
) -> None:
    """32-bit integer and float TIFFs map their range (0..65535, 0..255 or 0..1) onto 0..255."""
    ramp = np.tile(np.linspace(0, top, 256), (4, 1)).astype(np.int32 if mode == "I" else np.float32)
    path = tmp_path / "wide.tiff"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as written:
        assert written.mode == mode
    pixels = read_image(path, small_limits).image
    assert [pixels.getpixel((x, 1)) for x in (0, 255)] == [(0, 0, 0), (255, 255, 255)]
    assert close_to(pixels.getpixel((128, 1)), (128, 128, 128), tolerance=2)


def test_read_image_transparent_pixels_are_laid_on_white(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """RGBA and palette transparency become white; opaque pixels keep their colour."""
    folder, _ = good_images
    alpha = read_image(folder / "alpha.png", small_limits).image
    assert alpha.getpixel((1, 1)) == (255, 255, 255)
    assert close_to(alpha.getpixel((40, 40)), ALPHA_DISC_COLOR, tolerance=1)
    palette = read_image(folder / "palette.png", small_limits).image
    assert palette.getpixel((5, 50)) == (255, 255, 255)
    assert palette.getpixel((90, 50)) == (30, 160, 60)


def test_read_image_animated_gif_gives_its_first_frame(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """Only the first frame of an animation is used."""
    image = read_image(good_images[0] / "animated.gif", small_limits).image
    assert close_to(image.getpixel((48, 40)), GIF_FRAME_COLORS[0])


def test_read_image_cmyk_jpeg_keeps_its_colours(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """A CMYK JPEG converts back to the blue corner and yellow disc it was drawn with."""
    image = read_image(good_images[0] / "cmyk.jpg", small_limits).image
    assert close_to(image.getpixel((2, 2)), (40, 60, 200), tolerance=20)
    assert close_to(image.getpixel((45, 30)), (250, 220, 40), tolerance=25)


def test_read_image_bad_files_raise_image_error_naming_the_problem(
    bad_images: tuple[Path, dict[str, str]], small_limits: ImageLimits
) -> None:
    """Each unusable file raises ImageError carrying its path and saying what is wrong."""
    folder, expected = bad_images
    messages = {}
    for name in expected:
        with pytest.raises(ImageError) as caught:
            read_image(folder / name, small_limits)
        assert caught.value.path == folder / name
        messages[name] = caught.value.message
    assert {name: word in messages[name] for name, word in expected.items()} == dict.fromkeys(
        expected, True
    ), messages


def test_read_image_truncated_file_leaves_pillow_strict(
    bad_images: tuple[Path, dict[str, str]], small_limits: ImageLimits
) -> None:
    """Reading a truncated file neither loads it partially nor turns on LOAD_TRUNCATED_IMAGES."""
    with pytest.raises(ImageError, match="truncated"):
        read_image(bad_images[0] / "truncated.jpg", small_limits)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_read_image_large_header_is_refused_before_decoding(
    bad_images: tuple[Path, dict[str, str]], small_limits: ImageLimits
) -> None:
    """The header's size is checked first: the error names the pixels and the setting, not truncation."""
    with pytest.raises(ImageError) as caught:
        read_image(bad_images[0] / "large-header.png", small_limits)
    assert "3000x3000 is 9,000,000 pixels" in caught.value.message
    assert "images.max_pixels (4,000,000)" in caught.value.message
    assert "truncated" not in caught.value.message


def test_read_image_pillow_bomb_warning_never_escapes(tmp_path: Path) -> None:
    """A header above Pillow's warning threshold but below its hard limit raises only ImageError."""
    path = tmp_path / "warned.png"
    path.write_bytes(png_with_header_size(10_000, 10_000))  # 1e8 > Pillow's 8.9e7 warning line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match=r"images\.max_pixels"):
            read_image(path, ImageLimits(max_pixels=50_000_000))


def test_read_image_header_beyond_pillows_limit_is_an_image_error(
    bad_images: tuple[Path, dict[str, str]],
) -> None:
    """Pillow's own bomb limit still applies when max_pixels is higher, as an ImageError."""
    with pytest.raises(ImageError, match="decompression bomb") as caught:
        read_image(bad_images[0] / "bomb.png", ImageLimits(max_pixels=10**12))
    assert "images.max_pixels" in caught.value.message


def test_read_image_file_above_max_bytes_is_refused(
    good_images: GoodImages,
) -> None:
    """A file larger than images.max_bytes is refused with its size and the setting."""
    path = good_images[0] / "scene.png"
    with pytest.raises(ImageError, match=r"images\.max_bytes") as caught:
        read_image(path, ImageLimits(max_bytes=1000))
    assert f"{path.stat().st_size:,} bytes" in caught.value.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_read_image_unreadable_file_says_permission_denied(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """A file the daemon may not read is an ImageError that says permission denied."""
    path = good_images[0] / "scene.png"
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            read_image(path, small_limits)
    finally:
        path.chmod(0o644)


def test_read_image_missing_file_is_an_image_error(
    tmp_path: Path, small_limits: ImageLimits
) -> None:
    """A file deleted before it is read is an ImageError, not a FileNotFoundError."""
    with pytest.raises(ImageError, match="gone"):
        read_image(tmp_path / "vanished.jpg", small_limits)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_read_image_named_pipe_is_refused_without_blocking(
    tmp_path: Path, small_limits: ImageLimits
) -> None:
    """A FIFO named like an image is refused at once instead of blocking the worker."""
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(path, small_limits)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A single-colour RGB image."""
    return Image.new("RGB", size, color)


def test_compute_stats_black_and_white_span_the_brightness_scale() -> None:
    """Black measures brightness 0 and white 1, both without contrast."""
    black, white = compute_stats(solid((0, 0, 0))), compute_stats(solid((255, 255, 255)))
    assert (black.brightness, black.contrast, black.palette[0].name) == (0.0, 0.0, "black")
    assert (white.brightness, white.contrast, white.palette[0].name) == (1.0, 0.0, "white")


def test_compute_stats_half_black_half_white_has_full_contrast() -> None:
    """RMS contrast of an even black/white split is 0.5 (the largest possible)."""
    image = solid((0, 0, 0), (64, 64))
    image.paste((255, 255, 255), (0, 0, 32, 64))
    stats = compute_stats(image)
    assert stats.brightness == pytest.approx(0.5, abs=0.01)
    assert stats.contrast == pytest.approx(0.5, abs=0.01)


def test_compute_stats_pure_red_is_named_red_and_fully_saturated() -> None:
    """A pure red image has one palette entry, red, #ff0000, covering everything."""
    stats = compute_stats(solid((255, 0, 0)))
    assert stats.palette == (PaletteColor("red", "#ff0000", 1.0),)
    assert stats.saturation == 1.0


def test_compute_stats_gray_has_no_saturation() -> None:
    """Greys are unsaturated, however bright."""
    assert compute_stats(solid((128, 128, 128))).saturation == 0.0
    assert compute_stats(solid((200, 200, 200))).palette[0].name == "light gray"


@pytest.mark.parametrize(
    ("color", "name"),
    [
        ((0, 0, 255), "blue"),
        ((0, 200, 0), "green"),
        ((255, 255, 0), "yellow"),
        ((255, 140, 0), "orange"),
        ((255, 192, 203), "pink"),
        ((0, 0, 128), "navy"),
        ((128, 0, 128), "purple"),
        ((139, 69, 19), "brown"),
        ((135, 206, 235), "light blue"),
        ((20, 20, 20), "black"),
    ],
)
def test_compute_stats_common_colours_get_their_everyday_names(
    color: tuple[int, int, int], name: str
) -> None:
    """Well-known colours are named as a person would name them."""
    assert compute_stats(solid(color)).palette[0].name == name


def test_compute_stats_palette_is_ranked_and_drops_small_shares() -> None:
    """Colours come most common first; one covering under 3% is left out."""
    image = solid((255, 0, 0), (100, 100))
    image.paste((0, 0, 255), (0, 0, 100, 30))  # 30% blue
    image.paste((255, 255, 0), (0, 0, 10, 2))  # 0.2% yellow
    names = [color.name for color in compute_stats(image).palette]
    assert names == ["red", "blue"]


def test_compute_stats_palette_reports_at_most_five_colours(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """A busy image reports five colours, each with a share of at least 3%."""
    palette = read_image(good_images[0] / "scene.png", small_limits).stats.palette
    assert len(palette) == 5
    assert all(color.share >= 0.03 for color in palette)
    assert [color.share for color in palette] == sorted((c.share for c in palette), reverse=True)


@pytest.mark.parametrize(
    ("size", "orientation", "ratio"),
    [
        ((1920, 1080), "landscape", "16:9"),
        ((1080, 1920), "portrait", "9:16"),
        ((100, 96), "square", "1:1"),
        ((100, 90), "landscape", "1:1"),
        ((1500, 1000), "landscape", "3:2"),
        ((800, 1000), "portrait", "4:5"),
        ((2560, 1080), "landscape", "21:9"),
        ((1000, 300), "landscape", "21:9"),
    ],
)
def test_compute_stats_shape_names_orientation_and_nearest_ratio(
    size: tuple[int, int], orientation: str, ratio: str
) -> None:
    """Orientation allows 5% for square; the ratio is the nearest common one."""
    stats = compute_stats(solid((10, 10, 10), size))
    assert (stats.width, stats.height, stats.orientation, stats.aspect_ratio) == (
        *size,
        orientation,
        ratio,
    )


def stats_with(**changes: object) -> ImageStats:
    """An ImageStats for describe tests: a bright, soft, muted 16:9 landscape."""
    values: dict[str, object] = {
        "width": 1920,
        "height": 1080,
        "orientation": "landscape",
        "aspect_ratio": "16:9",
        "brightness": 0.8,
        "contrast": 0.05,
        "saturation": 0.1,
        "palette": (
            PaletteColor("light blue", "#8fbde8", 0.5),
            PaletteColor("white", "#fafafa", 0.3),
            PaletteColor("gray", "#808080", 0.1),
        ),
    }
    values.update(changes)
    return ImageStats(**values)  # type: ignore[arg-type]


def test_describe_stats_names_light_contrast_colour_shape_and_palette() -> None:
    """The phrase reads adjectives, shape with ratio, then the top three colours."""
    assert describe_stats(stats_with()) == (
        "bright, low-contrast, muted landscape image (16:9) dominated by light blue, white and gray"
    )


def test_describe_stats_middle_values_need_no_adjectives() -> None:
    """Unremarkable light, contrast and colour add no words; one colour reads alone."""
    stats = stats_with(
        brightness=0.5,
        contrast=0.2,
        saturation=0.4,
        orientation="portrait",
        aspect_ratio="2:3",
        palette=(PaletteColor("red", "#ff0000", 1.0),),
    )
    assert describe_stats(stats) == "portrait image (2:3) dominated by red"


def test_describe_stats_is_deterministic_and_mentions_the_top_colour(
    good_images: GoodImages, small_limits: ImageLimits
) -> None:
    """The same image gives the same phrase every time, naming its commonest colour."""
    path = good_images[0] / "photo.jpg"
    first, second = read_image(path, small_limits).stats, read_image(path, small_limits).stats
    assert describe_stats(first) == describe_stats(second)
    assert first.palette[0].name in describe_stats(first)


def decoded_size(data: bytes) -> tuple[str, tuple[int, int]]:
    """Format and size of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as image:
        return str(image.format), image.size


def test_encode_for_vision_shrinks_to_the_long_side() -> None:
    """A large image is reduced so its long side equals long_side, keeping the aspect."""
    assert decoded_size(encode_for_vision(solid((0, 90, 200), (800, 400)), 256)) == (
        "JPEG",
        (256, 128),
    )


def test_encode_for_vision_never_enlarges_a_normal_image() -> None:
    """An image already within long_side keeps its size."""
    assert decoded_size(encode_for_vision(solid((0, 90, 200), (200, 100)), 1024))[1] == (200, 100)


def test_encode_for_vision_enlarges_tiny_images_to_64_pixels() -> None:
    """A short side under 64 px is enlarged to 64, since small images crash some models."""
    assert decoded_size(encode_for_vision(solid((0, 90, 200), (20, 10)), 1024))[1] == (128, 64)


def test_encode_for_vision_thin_strip_is_padded_within_the_long_side() -> None:
    """Where 64 px would break long_side, the long side wins and the strip is padded to 64."""
    assert decoded_size(encode_for_vision(solid((0, 90, 200), (1000, 10)), 256))[1] == (256, 64)


def test_encode_for_vision_converts_other_modes_to_rgb() -> None:
    """An RGBA image is sent as an RGB JPEG (transparency on white)."""
    data = encode_for_vision(Image.new("RGBA", (100, 100), (0, 0, 0, 0)), 512)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB"
        assert close_to(image.getpixel((50, 50)), (255, 255, 255), tolerance=2)


def test_make_samples_draws_a_landscape_and_a_portrait(
    tmp_path: Path, small_limits: ImageLimits
) -> None:
    """The sample generator writes sunset.jpg (landscape) and still-life.png (portrait), small."""
    paths = make_samples(tmp_path)
    loaded = [read_image(path, small_limits) for path in paths]
    assert [path.name for path in paths] == ["sunset.jpg", "still-life.png"]
    assert [image.stats.orientation for image in loaded] == ["landscape", "portrait"]
    assert all(image.bytes < 60_000 for image in loaded)


def test_shipped_samples_are_readable_images(small_limits: ImageLimits) -> None:
    """inbox/samples holds exactly the two generated sample images (sidecars aside), and both decode."""
    folder = REPO / "inbox" / "samples"
    images = sorted(path.name for path in folder.iterdir() if path.suffix in (".jpg", ".png"))
    assert images == ["still-life.png", "sunset.jpg"]
    formats = [read_image(folder / name, small_limits).format for name in images]
    assert formats == ["PNG", "JPEG"]
