"""Names from a shared folder: not UTF-8, very long, or holding hidden characters."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import load_config
from daemon.fs.rawname import (
    NAME_MAX,
    display_name,
    escaped_name,
    name_from_record,
    same_name,
)
from daemon.pipeline import Context, process_batch
from daemon.pipeline.backends import build_context
from daemon.sidecar import SidecarPaths, read_sidecar, remove_sidecars, validate_sidecar
from daemon.sidecar.files import write_sidecars
from daemon.watch.follow import move_for
from tests.daemon_helpers import png_bytes
from tests.fake_ollama import FakeOllama

EXTS = (".jpg", ".jpeg", ".png", ".webp")


def raw_path(folder: Path, name: bytes) -> Path:
    """The path of a file called ``name`` (bytes, maybe not UTF-8) in ``folder``."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def listing(folder: Path) -> set[bytes]:
    """The names in ``folder`` as bytes."""
    return {os.fsencode(path.name) for path in folder.iterdir()}


@pytest.fixture
def ctx(tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama) -> Context:
    """A pipeline context over tmp_path/inbox with the tiny CLIP and the fake Ollama."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = {
        "inbox": str(inbox),
        "cache_dir": str(tmp_path / "cache"),
        "clip": {"model": str(tiny_clip_dir), "device": "cpu", "offline": True},
        "ollama": {"host": fake_ollama.url, "retries": 0},
        "log": {"format": "json", "level": "warning"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return build_context(load_config(path, {"HOME": str(tmp_path)}))


def inbox_of(ctx: Context) -> Path:
    """The context's one inbox folder."""
    return ctx.config.inbox[0]


def run(ctx: Context, *paths: Path) -> list[Any]:
    """Process ``paths`` once; their results."""
    return process_batch(list(paths), ctx)


# --- the two forms of a name ------------------------------------------------------------


def test_display_and_escaped_forms_of_a_latin1_name():
    """caf\\xe9 100%.png: shown with U+FFFD, recorded as percent-encoded bytes."""
    name = os.fsdecode(b"caf\xe9 100%.png")
    assert display_name(name) == "caf\ufffd 100%.png"
    assert escaped_name(name) == "caf%E9 100%25.png"
    assert name_from_record(display_name(name), escaped_name(name)) == name


def test_valid_utf8_names_are_their_own_record():
    """A valid name (accents, %, emoji) is recorded as it is, with no escaped form."""
    for name in ("café 100%.png", "東京🦊.jpg", "%E9.png"):
        assert display_name(name) == name and escaped_name(name) is None


@given(st.binary(min_size=1, max_size=64).filter(lambda b: b"/" not in b and b"\0" not in b))
def test_escaped_name_round_trips_any_bytes(raw):
    """Any name the kernel allows: URL-decoding the escaped form gives its bytes back, the
    display form is valid Unicode, and same_name recognises it."""
    name = os.fsdecode(raw)
    escaped = escaped_name(name)
    display_name(name).encode("utf-8")
    if escaped is not None:
        assert unquote_to_bytes(escaped) == raw
        escaped.encode("utf-8")
    assert same_name({"file": display_name(name), "file_raw": escaped}, name)


# --- a name that is not UTF-8, end to end -------------------------------------------------


def test_latin1_name_gets_both_sidecars_and_an_exact_valid_record(ctx):
    """The issue's hole: the .json is written too, validates, and names the file exactly."""
    image = raw_path(inbox_of(ctx), b"caf\xe9.png")
    image.write_bytes(png_bytes(3))
    (result,) = run(ctx, image)
    assert result.outcome == "ok"
    assert listing(inbox_of(ctx)) == {b"caf\xe9.png", b"caf\xe9.txt", b"caf\xe9.json"}
    doc = read_sidecar(raw_path(inbox_of(ctx), b"caf\xe9.json"))
    assert doc is not None and validate_sidecar(doc) == []
    assert doc["image"]["file"] == "caf\ufffd.png" and doc["image"]["file_raw"] == "caf%E9.png"
    assert doc["outputs"]["txt"] == "caf\ufffd.txt"
    assert run(ctx, image)[0].reason == "up to date (fresh)"


def test_two_latin1_names_that_look_alike_keep_their_own_records(ctx):
    """caf\\xe9 and caf\\xe8 both show as caf\ufffd: each record still names its own file."""
    first = raw_path(inbox_of(ctx), b"caf\xe9.png")
    second = raw_path(inbox_of(ctx), b"caf\xe8.png")
    first.write_bytes(png_bytes(1))
    second.write_bytes(png_bytes(2))
    assert [r.outcome for r in run(ctx, first, second)] == ["ok", "ok"]
    for image, raw in ((first, "caf%E9.png"), (second, "caf%E8.png")):
        doc = read_sidecar(image.with_suffix(".json"))
        assert doc is not None and doc["image"]["file_raw"] == raw
    removed = remove_sidecars(first)
    assert sorted(os.fsencode(p.name) for p in removed) == [b"caf\xe9.json", b"caf\xe9.txt"]
    assert b"caf\xe8.json" in listing(inbox_of(ctx))


def test_latin1_name_sidecars_follow_a_move_to_another_latin1_name(ctx):
    """Moving the image carries its sidecars, and the record takes the new exact name."""
    src = raw_path(inbox_of(ctx), b"caf\xe9.png")
    src.write_bytes(png_bytes(4))
    run(ctx, src)
    dest = raw_path(inbox_of(ctx), b"na\xefve.png")
    src.rename(dest)
    moved = move_for(src, dest, "stem", EXTS)
    assert sorted(os.fsencode(p.name) for p in moved) == [b"na\xefve.json", b"na\xefve.txt"]
    doc = read_sidecar(dest.with_suffix(".json"))
    assert doc is not None and doc["image"]["file_raw"] == "na%EFve.png"
    assert doc["outputs"]["txt"] == "na\ufffdve.txt"
    assert validate_sidecar(doc) == []


def test_name_with_hidden_characters_is_recorded_exactly_and_shown_escaped(ctx):
    """A bidi override or a zero-width space in a name: exact in the value, escaped in the
    file's bytes, so `cat photo.json` shows no reordered text."""
    name = "a\u202egnp.exe\u200b.png"
    image = inbox_of(ctx) / name
    image.write_bytes(png_bytes(5))
    (result,) = run(ctx, image)
    assert result.outcome == "ok"
    data = image.with_suffix(".json").read_bytes()
    assert "\u202e".encode() not in data and b"\\u202e" in data and b"\\u200b" in data
    assert json.loads(data)["image"]["file"] == name


# --- very long names ---------------------------------------------------------------------


@pytest.mark.parametrize("naming", ["stem", "filename"])
def test_250_byte_name_gets_both_sidecars_in_either_naming(ctx, naming):
    """250 bytes: photo.jpg.json is 255 bytes, the limit: both forms fit."""
    folder = inbox_of(ctx)
    (folder / ".promptd.yaml").write_text(f"naming: {naming}\n", encoding="utf-8")
    image = folder / ("é" * 122 + "ab.png")
    assert len(os.fsencode(image.name)) == 250
    image.write_bytes(png_bytes(6))
    (result,) = run(ctx, image)
    assert result.outcome == "ok"
    assert all(len(os.fsencode(p.name)) <= NAME_MAX for p in result.sidecars)
    assert len(result.sidecars) == 2


def test_name_whose_filename_form_sidecar_would_be_256_bytes_falls_back_to_the_stem(ctx):
    """251 bytes under naming: filename: photo.jpg.json would be 256 bytes; photo.json is used."""
    folder = inbox_of(ctx)
    (folder / ".promptd.yaml").write_text("naming: filename\n", encoding="utf-8")
    image = folder / ("x" * 247 + ".png")
    image.write_bytes(png_bytes(7))
    (result,) = run(ctx, image)
    assert result.outcome == "ok"
    assert sorted(p.name for p in result.sidecars) == ["x" * 247 + ".json", "x" * 247 + ".txt"]


def test_name_too_long_for_any_sidecar_is_refused_before_anything_is_written(ctx):
    """255 bytes: even photo.json would be 256 bytes; refused with the reason, nothing written."""
    folder = inbox_of(ctx)
    image = folder / ("y" * 251 + ".png")
    image.write_bytes(png_bytes(8))
    (result,) = run(ctx, image)
    assert result.outcome == "failed"
    assert result.reason == (
        "the name is 255 bytes: its sidecar would be named with 256 bytes, over the "
        "filesystem's 255-byte limit; nothing was written; rename the image to at most 250 bytes"
    )
    assert [p.name for p in folder.iterdir()] == [image.name]


def test_long_names_sharing_a_stem_are_refused_rather_than_share_a_sidecar(ctx):
    """Two 251-byte names with one stem need the filename form, which cannot exist: refused."""
    folder = inbox_of(ctx)
    images = [folder / ("z" * 247 + ext) for ext in (".png", ".jpg")]
    for index, image in enumerate(images):
        image.write_bytes(png_bytes(9 + index))
    assert [r.outcome for r in run(ctx, *images)] == ["failed", "failed"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in images)


def test_write_sidecars_record_that_cannot_be_encoded_leaves_no_txt(tmp_path):
    """The .json is serialised before the .txt is written: a failure leaves nothing behind."""
    paths = SidecarPaths(tmp_path / "a.txt", tmp_path / "a.json")
    doc = {"outputs": {"txt": None, "txt_sha256": None}, "bad": "\udcff"}
    with pytest.raises(ValueError, match="lone surrogate"):
        write_sidecars(paths, txt_line=None, doc=doc, outputs=("json",))
    line_doc = {"outputs": {"txt": "a.txt", "txt_sha256": None}, "bad": "\udcff"}
    with pytest.raises(ValueError):
        write_sidecars(paths, txt_line="a cat", doc=line_doc, outputs=("txt", "json"))
    assert list(tmp_path.iterdir()) == []
