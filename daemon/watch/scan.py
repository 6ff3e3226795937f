"""Finding the images that need work: the start-up scan and the rescans of `promptd run`.

The filesystem is the truth: an image whose sidecars are missing or out of date is pending.
Each folder is listed once and its rule resolved once; an image whose .json records the same
size, mtime and rule fingerprint is passed over on a stat, without hashing or decoding it.
The freshness test is the pipeline's own (`freshness_of`), so the scan and the worker agree.
Names stay strings until an image turns out to be pending: a scan of 100,000 up-to-date
images is bounded by reading their small .json files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from daemon import sidecar
from daemon.errors import PromptdError
from daemon.fs.names import is_ignored_name
from daemon.fs.treewalk import is_reported_link, walk_folders
from daemon.pipeline import Context, freshness_of


def pending_images(
    root: Path,
    ctx: Context,
    *,
    redo_degraded: bool,
    on_symlink: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Every image under ``root`` that needs work, lazily, folder by folder.

    Images held by an invalid rule file are yielded too, so the worker records them as held
    and `promptd status` shows the folder. Links to images or folders (never followed) go to
    ``on_symlink``.
    """
    limits = ctx.config.images
    extensions = tuple(ext.lower() for ext in limits.extensions)

    def looks_like_image(name: str) -> bool:
        return name.lower().endswith(extensions) and not is_ignored_name(name, limits.ignore)

    def link(entry: os.DirEntry[str]) -> None:
        if on_symlink is not None and is_reported_link(entry, looks_like_image):
            on_symlink(Path(entry.path))

    for folder, files in walk_folders(root, ignore=limits.ignore, on_symlink=link):
        images = [entry for entry in files if looks_like_image(entry.name)]
        if images:
            yield from _pending_in_folder(folder, images, files, ctx, redo_degraded)


def _pending_in_folder(
    folder: str,
    images: list[os.DirEntry[str]],
    files: list[os.DirEntry[str]],
    ctx: Context,
    redo_degraded: bool,
) -> Iterator[Path]:
    try:
        rule = ctx.rules.resolve(Path(images[0].path))
    except PromptdError:
        yield from (Path(entry.path) for entry in images)  # the worker records why (held)
        return
    names = {entry.name for entry in files}
    index = sidecar.index_folder(names, ctx.config.images.extensions)
    wants_json = "json" in rule.settings.outputs
    for entry in images:
        txt_name, json_name = sidecar.sidecar_names(entry.name, rule.settings.naming, index, ())
        if wants_json and json_name not in names:
            yield Path(entry.path)
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        previous = sidecar.read_sidecar(f"{folder}/{json_name}") if json_name in names else None
        state = freshness_of(f"{folder}/{txt_name}", previous, st, rule)
        if state == "stale" or (state == "degraded" and redo_degraded):
            yield Path(entry.path)
