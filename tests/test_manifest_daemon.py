"""End to end: `promptd run` keeps a folder's manifests current as images come, move and go.

One daemon (clip mode: the tiny CLIP, no LLM) on an inbox whose folder ``set`` keeps hf and
kohya manifests; the tests read metadata.jsonl and metadata_kohya.json the way the trainers do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import Daemon, png_bytes, sidecar_doc, wait_until, write_images
from tests.fake_ollama import FakeOllama
from tests.test_daemon import daemon_config
from tests.test_manifests import captions_on_disk, kohya_lookup

pytestmark = pytest.mark.slow
SECONDS = 30  # deadline for a change to show in the manifests (the machine is shared)


def hf_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """file_name -> row of the folder's metadata.jsonl ({} while there is none)."""
    try:
        text = (folder / "metadata.jsonl").read_text("utf-8")
    except FileNotFoundError:
        return {}
    rows = [json.loads(line) for line in text.splitlines()]
    return {row["file_name"]: row for row in rows}


def kohya_images(folder: Path) -> set[str]:
    """The images kohya's lookup finds through metadata_kohya.json (absolute paths)."""
    try:
        metadata = json.loads((folder / "metadata_kohya.json").read_text("utf-8"))
    except (FileNotFoundError, ValueError):
        return set()
    try:
        return set(kohya_lookup(folder, metadata))
    except AssertionError:  # an image listed a moment ago is gone: not current yet
        return set()


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path
) -> Iterator[tuple[Daemon, Path]]:
    """The daemon, ready, and the ``set`` folder (which keeps manifests)."""
    tmp = tmp_path_factory.mktemp("manifests")
    with FakeOllama() as fake:
        config = daemon_config(
            tmp,
            tiny_clip_dir,
            fake.url,
            defaults={"mode": "clip"},
            watch={"manifest_interval_s": 1.0},
        )
        folder = tmp / "inbox" / "set"
        folder.mkdir(parents=True)
        (folder / ".promptd.yaml").write_text("manifests: [hf, kohya]\n", encoding="utf-8")
        daemon = Daemon(config, tmp / "daemon.log")
        try:
            daemon.wait_ready()
            yield daemon, folder
        finally:
            daemon.stop()


def test_run_manifests_follow_adds_moves_and_deletes(running: tuple[Daemon, Path]) -> None:
    """New images appear in both manifests within seconds with the caption of their .txt; a
    moved one is listed under its new name only; a deleted one disappears; an image that
    cannot be read is never listed."""
    _, folder = running
    images = write_images(folder / "adds", 3, prefix="add")
    (folder / "adds" / "broken.png").write_bytes(png_bytes(1)[:40])
    wanted = {f"adds/{p.name}" for p in images}
    wait_until(lambda: set(hf_rows(folder)) == wanted, SECONDS, "the new images in metadata.jsonl")
    wait_until(lambda: kohya_images(folder) == set(captions_on_disk(folder)), SECONDS, "kohya")
    rows = hf_rows(folder)
    on_disk = captions_on_disk(folder)
    assert {str((folder / name).resolve()): row["text"] for name, row in rows.items()} == on_disk
    wait_until(
        lambda: (sidecar_doc(folder / "adds" / "broken.png") or {}).get("status") == "error",
        SECONDS,
        "the broken image's error record",
    )
    assert "adds/broken.png" not in rows

    moved = folder / "moved" / "renamed.png"
    moved.parent.mkdir()
    images[0].rename(moved)
    after_move = (wanted - {f"adds/{images[0].name}"}) | {"moved/renamed.png"}
    wait_until(lambda: set(hf_rows(folder)) == after_move, SECONDS, "the move in metadata.jsonl")

    images[1].unlink()
    after_delete = after_move - {f"adds/{images[1].name}"}
    wait_until(
        lambda: set(hf_rows(folder)) == after_delete, SECONDS, "the delete in metadata.jsonl"
    )
    expected = {str((folder / name).resolve()) for name in after_delete}
    wait_until(
        lambda: kohya_images(folder) == expected, SECONDS, "the delete in metadata_kohya.json"
    )
    assert "adds/broken.png" not in hf_rows(folder)


def test_run_burst_rewrites_the_manifests_far_less_often_than_once_per_image(
    running: tuple[Daemon, Path],
) -> None:
    """40 images arriving together end up listed, through a handful of rewrites."""
    daemon, folder = running
    before = len(daemon.events("manifests_written"))
    images = write_images(folder / "burst", 40, prefix="burst")
    wanted = {f"burst/{p.name}" for p in images}
    wait_until(lambda: wanted <= set(hf_rows(folder)), 90, "the burst in metadata.jsonl")
    rewrites = len(daemon.events("manifests_written")) - before
    assert 1 <= rewrites < len(images) // 2, rewrites
