"""Dataset manifests: the rows read from the records, the three formats, what real readers
make of them (Hugging Face ``datasets``, and kohya's key lookup written out below), the
debounced keeper and `promptd export`."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.config import load_config
from daemon.config.rules import RuleResolver
from daemon.dataset.formats import kohya_json
from daemon.dataset.keeper import ManifestKeeper
from daemon.dataset.rows import RowCache, scan_rows
from tests.fake_ollama import FakeOllama
from tests.images import make_bad_images, make_good_images
from tests.test_process import write_config

KOHYA_EXTENSIONS = [
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".PNG",
    ".JPG",
    ".JPEG",
    ".WEBP",
    ".BMP",
]


def kohya_lookup(image_dir: Path, metadata: dict[str, Any]) -> dict[str, str]:
    """What kohya's FineTuningDataset does with --in_json: each key is a path that exists, or
    ``<image_dir>/<key><ext>``; the caption is caption + ", " + tags. Image path -> caption."""
    found = {}
    for key, entry in metadata.items():
        if os.path.exists(key):  # noqa: PTH110 - kohya's own check, on purpose
            path = key
        else:
            base = os.path.join(image_dir, key)  # noqa: PTH118 - kohya's own lookup
            matches = (glob.glob(glob.escape(base + ext)) for ext in KOHYA_EXTENSIONS)  # noqa: PTH207
            paths = sorted({p for found in matches for p in found})
            assert paths, f"no image / 画像がありません: {key}"
            path = paths[0]
        caption, tags = entry.get("caption"), entry.get("tags")
        if caption is None:
            caption = tags
        elif tags:
            caption = caption + ", " + tags
        found[str(Path(path).resolve())] = caption
    return found


def captions_on_disk(folder: Path) -> dict[str, str]:
    """Image path -> the first line of its .txt, for every image with an ok/degraded record."""
    found = {}
    for record in folder.rglob("*.json"):
        doc = json.loads(record.read_text("utf-8"))
        if doc.get("schema") != "promptd.sidecar/1" or doc["status"] == "error":
            continue
        image = record.with_name(doc["image"]["file"])
        txt = record.with_suffix(".txt")
        found[str(image.resolve())] = txt.read_text("utf-8").splitlines()[0]
    return found


@pytest.fixture
def dataset(tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama) -> tuple[Path, Path]:
    """An inbox whose folder ``set`` keeps hf and kohya manifests: good images at the top and in
    a subfolder, bad ones, two images sharing a stem; processed once. (config, set folder)"""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url, defaults={"mode": "clip"})
    folder = tmp_path / "inbox" / "set"
    make_good_images(folder)
    make_good_images(folder / "sub")
    make_bad_images(folder)
    shutil.copy(folder / "scene.png", folder / "twin.png")
    shutil.copy(folder / "sub" / "scene.png", folder / "twin.jpg")
    (folder / ".promptd.yaml").write_text("manifests: [hf, kohya]\ntrigger_words: [zxq]\n")
    assert main(["process", str(tmp_path / "inbox"), "--config", str(config), "--no-progress"]) == 1
    return config, folder


def test_manifests_list_every_ok_image_below_the_folder_and_no_error_image(
    dataset: tuple[Path, Path],
) -> None:
    """`promptd process` leaves both manifests; each lists the ok images of the folder and its
    subfolder with the caption of their .txt, never an error image."""
    _, folder = dataset
    expected = captions_on_disk(folder)
    rows = [
        json.loads(line) for line in (folder / "metadata.jsonl").read_text("utf-8").splitlines()
    ]
    assert {str((folder / r["file_name"]).resolve()): r["text"] for r in rows} == expected
    assert all(
        r["status"] == "ok" and set(r) == {"file_name", "text", "negative_prompt", "tags", "status"}
        for r in rows
    )
    errors = {
        r.name for r in folder.glob("*.json") if json.loads(r.read_text()).get("status") == "error"
    }
    assert errors and not any(r["file_name"].rsplit(".", 1)[0] + ".json" in errors for r in rows)
    assert any(r["file_name"].startswith("sub/") for r in rows)
    kohya = json.loads((folder / "metadata_kohya.json").read_text("utf-8"))
    assert set(kohya_lookup(folder, kohya)) == set(expected)


def test_kohya_reader_finds_each_caption_with_its_tags_appended_once(
    dataset: tuple[Path, Path],
) -> None:
    """kohya's lookup finds every image; the caption it trains on is the .txt line followed
    by the record's tags that the line does not already hold."""
    _, folder = dataset
    kohya = json.loads((folder / "metadata_kohya.json").read_text("utf-8"))
    trained = kohya_lookup(folder, kohya)
    for image, line in captions_on_disk(folder).items():
        assert trained[image].startswith(line)
        pieces = [p.casefold() for p in trained[image].split(", ")]
        assert len(pieces) == len(set(pieces)), trained[image]
    keys = set(kohya)
    assert "sub/scene" in keys and "scene" in keys  # relative, without the extension
    absolute = {k for k in keys if Path(k).is_absolute()}
    assert absolute == {  # a shared stem, or an ending kohya does not glob for
        str(folder / name)
        for name in (
            "twin.png",
            "twin.jpg",
            "animated.gif",
            "scan.tiff",
            "sub/animated.gif",
            "sub/scan.tiff",
        )
    }


def test_hugging_face_datasets_loads_every_image_with_its_caption(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """datasets.load_dataset("imagefolder", data_dir=folder) yields every listed image once,
    with its caption under text (and the other columns), as diffusers reads it."""
    datasets = pytest.importorskip("datasets", reason="pip install 'datasets>=3.4' (dev extra)")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, folder = dataset
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "hf")
    )
    loaded = loaded.cast_column("image", datasets.Image(decode=False))
    seen = {str(Path(row["image"]["path"]).resolve()): row["text"] for row in loaded}
    assert seen == captions_on_disk(folder)
    assert {"text", "negative_prompt", "tags", "status"} <= set(loaded.column_names)


def test_manifests_do_not_disturb_the_next_run(
    dataset: tuple[Path, Path], fake_ollama: FakeOllama
) -> None:
    """A second run finds every image up to date: the manifests are neither images nor
    foreign sidecars, and are rewritten with the same content."""
    config, folder = dataset
    before = (folder / "metadata.jsonl").read_bytes(), (folder / "metadata_kohya.json").read_bytes()
    asked = len(fake_ollama.requests)
    assert main(["process", str(folder), "--config", str(config), "--no-progress"]) == 0
    assert len(fake_ollama.requests) == asked
    assert (
        (folder / "metadata.jsonl").read_bytes(),
        (folder / "metadata_kohya.json").read_bytes(),
    ) == before


def test_export_writes_each_format_on_demand(
    dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`promptd export` writes the same hf and kohya manifests, CSV, and to stdout with --out -."""
    config, folder = dataset
    out = folder.parent / "exported"
    out.mkdir()
    base = ["export", str(folder), "--config", str(config)]
    assert main([*base, "--format", "hf", "--out", str(out / "m.jsonl")]) == 0
    assert (out / "m.jsonl").read_bytes() == (folder / "metadata.jsonl").read_bytes()
    assert main([*base, "--format", "kohya", "--out", str(out / "k.json")]) == 0
    assert (out / "k.json").read_bytes() == (folder / "metadata_kohya.json").read_bytes()
    assert main([*base, "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO((folder / "captions.csv").read_text("utf-8"))))
    assert {r["file_name"]: r["text"] for r in table} == {
        json.loads(line)["file_name"]: json.loads(line)["text"]
        for line in (folder / "metadata.jsonl").read_text("utf-8").splitlines()
    }
    capsys.readouterr()
    assert main([*base, "--format", "hf", "--out", "-"]) == 0
    assert capsys.readouterr().out.encode() == (folder / "metadata.jsonl").read_bytes()
    assert main(["export", str(folder / "nope"), "--config", str(config)]) == 1


def write_record(folder: Path, name: str, **changes: Any) -> Path:
    """An image ``name`` and a minimal ok record for it (fields replaced by ``changes``)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = name
    path = folder / image
    path.write_bytes(b"not really an image")
    st = path.stat()
    doc: dict[str, Any] = {
        "schema": "promptd.sidecar/1",
        "status": "ok",
        "prompt": f"a photo of {image}",
        "negative_prompt": "blurry",
        "tags": ["red", "cat"],
        "image": {"file": image, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
    }
    doc.update(changes)
    record = folder / (Path(image).stem + ".json")
    record.write_text(json.dumps(doc), encoding="utf-8")
    return record


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "error"},
        {"status": "pending"},
        {"prompt": 42},
        {"negative_prompt": None},
        {"image": {"file": "../outside.png", "bytes": 19, "mtime_ns": 0}},
        {"image": "photo.png"},
        {"image": {"file": "photo.png", "bytes": 1, "mtime_ns": 1}},  # the image changed since
        {"schema": "something else"},
    ],
    ids=[
        "error",
        "unknown status",
        "prompt type",
        "negative type",
        "escape",
        "image type",
        "stale",
        "schema",
    ],
)
def test_rows_leave_out_images_whose_record_is_not_usable(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    """A hostile or stale record lists nothing; a good one beside it still does."""
    write_record(tmp_path, "photo.png", **changes)
    write_record(tmp_path, "good.png")
    assert [row.file_name for row in scan_rows(tmp_path, [".png"])] == ["good.png"]


def test_rows_take_the_users_edited_caption_and_clean_tags(tmp_path: Path) -> None:
    """The .txt (what trainers read) wins over the recorded prompt; tags that are not plain
    one-line strings without commas are dropped; a .txt that is not UTF-8 falls back."""
    write_record(tmp_path, "a.png", tags=["ok tag", "with, comma", 7, "  spaced   out "])
    (tmp_path / "a.txt").write_text("my own words, zxq\nsecond line\n", encoding="utf-8")
    write_record(tmp_path, "b.png")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe")
    a, b = scan_rows(tmp_path, [".png"])
    assert (a.text, a.tags) == ("my own words, zxq", ("ok tag", "spaced out"))
    assert b.text == "a photo of b.png"


def test_rows_read_an_own_caption_edited_to_the_same_length(tmp_path: Path) -> None:
    """A .txt promptd wrote is trusted unread only while it is no newer than its record: an
    edit of the same length, made later, is what the manifest lists."""
    record = write_record(tmp_path, "c.png", prompt="abc", outputs={"txt": "c.txt"})
    txt = tmp_path / "c.txt"
    txt.write_text("abc\n", encoding="utf-8")
    stamp = record.stat().st_mtime_ns
    os.utime(txt, ns=(stamp, stamp - 1_000_000))
    assert [r.text for r in scan_rows(tmp_path, [".png"])] == ["abc"]
    txt.write_text("xyz\n", encoding="utf-8")
    os.utime(txt, ns=(stamp, stamp + 1_000_000_000))
    assert [r.text for r in scan_rows(tmp_path, [".png"])] == ["xyz"]


def test_rows_cache_rereads_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second scan with the cache reads no record that is unchanged, and sees an edit."""
    from daemon.dataset import rows as rows_module

    for index in range(5):
        write_record(tmp_path, f"i{index}.png")
    cache = RowCache()
    scan_rows(tmp_path, [".png"], cache=cache)
    reads: list[str] = []
    original = rows_module.read_sidecar
    monkeypatch.setattr(rows_module, "read_sidecar", lambda p: reads.append(str(p)) or original(p))
    assert len(scan_rows(tmp_path, [".png"], cache=cache)) == 5 and reads == []
    (tmp_path / "i3.txt").write_text("edited\n", encoding="utf-8")
    edited = scan_rows(tmp_path, [".png"], cache=cache)
    assert [r.text for r in edited if r.file_name == "i3.png"] == ["edited"]
    assert len(reads) == 1


def test_rows_skip_hidden_and_ignored_folders_and_names_that_cannot_be_written(
    tmp_path: Path,
) -> None:
    """Hidden folders and ignore patterns are left out; a name that is not valid UTF-8 too."""
    write_record(tmp_path / ".hidden", "h.png")
    write_record(tmp_path / "originals", "o.png")
    write_record(tmp_path, "kept.png")
    raw = os.fsencode(tmp_path) + b"/bad\xff.png"
    with open(raw, "wb") as handle:  # noqa: PTH123 - a bytes path
        handle.write(b"x")
    names = [r.file_name for r in scan_rows(tmp_path, [".png"], ignore=["originals"])]
    assert names == ["kept.png"]


def test_kohya_tags_already_in_the_caption_are_not_repeated(tmp_path: Path) -> None:
    """kohya appends tags to the caption, so those the caption has are left out."""
    write_record(tmp_path, "a.png", tags=["red", "cat", "blue"])
    (tmp_path / "a.txt").write_text("zxq, Red, a cat\n", encoding="utf-8")
    rows = scan_rows(tmp_path, [".png"])
    assert json.loads(kohya_json(rows, tmp_path)) == {
        "a": {"caption": "zxq, Red, a cat", "tags": "cat, blue"}
    }


class Clock:
    """A settable monotonic clock for the keeper."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keeper_rewrites_a_folder_at_most_once_per_interval(
    dataset: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of notes is one rewrite; more notes within the interval wait for it to pass; a
    folder without `manifests` is never written."""
    config_path, folder = dataset
    config = load_config(config_path, {})
    rules = RuleResolver(config)
    clock = Clock()
    keeper = ManifestKeeper(lambda: config, lambda: rules, clock)
    images = sorted(folder.rglob("*.png"))
    for image in images:
        keeper.note(image)
    keeper.note(folder.parent / "elsewhere" / "x.png")  # no manifests there
    assert keeper.flush_due() == 1 and keeper.rewrites == 1
    keeper.note(images[0])
    assert keeper.flush_due() == 0
    clock.now += config.watch.manifest_interval_s
    assert keeper.flush_due() == 1 and keeper.rewrites == 2
    assert keeper.flush_due() == 0
    assert not (folder.parent / "elsewhere").exists()


def test_keeper_nested_folder_with_its_own_manifests_is_listed_only_there(
    dataset: tuple[Path, Path],
) -> None:
    """Each image is in exactly one metadata.jsonl: that of the nearest folder whose rule sets
    `manifests` (so loading the outer folder sees every image once)."""
    config_path, folder = dataset
    (folder / "sub" / ".promptd.yaml").write_text("manifests: [hf]\n")
    config = load_config(config_path, {})
    rules = RuleResolver(config)
    keeper = ManifestKeeper(lambda: config, lambda: rules)
    keeper.discover()
    keeper.flush_all()
    outer = [
        json.loads(x)["file_name"] for x in (folder / "metadata.jsonl").read_text().splitlines()
    ]
    inner = [
        json.loads(x)["file_name"]
        for x in (folder / "sub" / "metadata.jsonl").read_text().splitlines()
    ]
    assert inner and not any(name.startswith("sub/") for name in outer)
    assert all("/" not in name for name in inner)


def test_image_named_like_a_manifest_keeps_its_own_record(
    dataset: tuple[Path, Path],
) -> None:
    """An image called metadata_kohya.png gets its sidecars in the filename form, so the
    manifest and the image's record never take each other's place."""
    config_path, folder = dataset
    shutil.copy(folder / "scene.png", folder / "metadata_kohya.png")
    assert main(["process", str(folder), "--config", str(config_path), "--no-progress"]) == 0
    record = json.loads((folder / "metadata_kohya.png.json").read_text("utf-8"))
    assert record["schema"] == "promptd.sidecar/1" and record["status"] == "ok"
    manifest = json.loads((folder / "metadata_kohya.json").read_text("utf-8"))
    assert "metadata_kohya" in manifest and "schema" not in manifest
