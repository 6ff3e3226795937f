"""The stat-only scan: which images under a folder still need work."""

from __future__ import annotations

import json
import os
from pathlib import Path

from daemon.config import load_config
from daemon.pipeline import Context, process_batch
from daemon.pipeline.backends import build_context
from daemon.watch.scan import pending_images
from tests.fake_ollama import FakeOllama
from tests.images import make_good_images
from tests.test_process import write_config


def context(tmp_path: Path, clip_dir: Path, url: str, **defaults: object) -> Context:
    """A pipeline context over tmp_path/inbox (clip mode unless told otherwise)."""
    config = write_config(tmp_path, clip_dir, url, defaults={"mode": "clip", **defaults})
    return build_context(load_config(config))


def pending(ctx: Context, *, redo_degraded: bool = False) -> set[str]:
    """Names of the pending images under the inbox."""
    root = ctx.config.inbox[0]
    return {p.name for p in pending_images(root, ctx, redo_degraded=redo_degraded)}


def test_scan_after_processing_finds_nothing_and_new_images_are_pending(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """Processed images are up to date; an image without a .json is pending."""
    ctx = context(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = ctx.config.inbox[0]
    good = make_good_images(inbox / "sub")
    assert pending(ctx) == set(good)
    process_batch(sorted((inbox / "sub").iterdir()), ctx)
    assert pending(ctx) == set()
    (inbox / "sub" / "new.png").write_bytes((inbox / "sub" / "scene.png").read_bytes())
    assert pending(ctx) == {"new.png"}


def test_scan_touched_image_and_changed_rule_are_pending(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """A new mtime makes one image pending; a rule change makes its whole folder pending."""
    ctx = context(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = ctx.config.inbox[0]
    good = make_good_images(inbox / "a")
    make_good_images(inbox / "b")
    process_batch([*sorted((inbox / "a").iterdir()), *sorted((inbox / "b").iterdir())], ctx)
    os.utime(inbox / "b" / "scene.png", ns=(10**9, 10**9))
    (inbox / "a" / ".promptd.yaml").write_text("trigger_words: [zxq]\n")
    found = {p for p in pending_images(inbox, ctx, redo_degraded=False)}
    assert found == {inbox / "a" / n for n in good} | {inbox / "b" / "scene.png"}


def test_scan_degraded_results_pending_only_when_asked(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """A degraded sidecar is redone only when the caller says the missing piece is back."""
    ctx = context(tmp_path, tiny_clip_dir, fake_ollama.url, mode="speed")
    inbox = ctx.config.inbox[0]
    make_good_images(inbox)
    fake_ollama.down()
    process_batch([inbox / "scene.png"], ctx)
    assert json.loads((inbox / "scene.json").read_text())["status"] == "degraded"
    assert "scene.png" not in pending(ctx, redo_degraded=False)
    assert "scene.png" in pending(ctx, redo_degraded=True)


def test_scan_held_folder_yields_its_images_for_the_worker_to_record(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """Images under an invalid rule file are yielded, so the worker can report them as held."""
    ctx = context(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = ctx.config.inbox[0]
    good = make_good_images(inbox / "held")
    (inbox / "held" / ".promptd.yaml").write_text("mode: [not, a, mode]\n")
    assert pending(ctx) == set(good)
    results = process_batch(sorted(pending_images(inbox, ctx, redo_degraded=False)), ctx)
    assert {r.outcome for r in results} == {"held"}


def test_scan_ignores_nfs_silly_rename_placeholders(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """`.nfsXXXX` files (an open file deleted on an NFS share) are never pending images."""
    ctx = context(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = ctx.config.inbox[0]
    make_good_images(inbox)
    placeholder = inbox / ".nfs000000000123abcd00000001.png"
    placeholder.write_bytes((inbox / "scene.png").read_bytes())

    assert placeholder.name not in pending(ctx)
    assert "scene.png" in pending(ctx)
