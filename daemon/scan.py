"""Finding the images that need work: the start-up scan and the rescans of `promptd run`.

The filesystem is the truth: an image whose sidecars are missing or out of date is pending.
Each folder is listed once and its rule resolved once; an image whose .json records the same
size, mtime and rule fingerprint is passed over on a stat, without hashing or decoding it.
The freshness test is the pipeline's own (`freshness_of`), so the scan and the worker agree.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path

from . import sidecar
from .errors import ConfigError
from .pipeline import Context, freshness_of, is_candidate
from .treewalk import scan


def pending_images(root: Path, ctx: Context, *, redo_degraded: bool) -> Iterator[Path]:
    """Every image under ``root`` that needs work, lazily, folder by folder.

    Images held by an invalid rule file are yielded too, so the worker records them as held
    and `promptd status` shows the folder.
    """
    config = ctx.config
    found = scan(root, is_candidate=lambda p: is_candidate(p, config), ignore=config.images.ignore)
    for folder, group in groupby(found, key=lambda p: p.parent):
        yield from _pending_in_folder(folder, list(group), ctx, redo_degraded)


def _pending_in_folder(
    folder: Path, images: list[Path], ctx: Context, redo_degraded: bool
) -> Iterator[Path]:
    try:
        rule = ctx.rules.resolve(images[0])
        names = set(os.listdir(folder))  # noqa: PTH208 - names only, no Path per entry
    except (ConfigError, OSError):
        yield from images  # the worker records why (held, vanished)
        return
    extensions = ctx.config.images.extensions
    index = sidecar.index_folder(names, extensions)
    for path in images:
        txt_name, json_name = sidecar.sidecar_names(
            path.name, rule.settings.naming, index, extensions
        )
        paths = sidecar.SidecarPaths(folder / txt_name, folder / json_name)
        if "json" in rule.settings.outputs and json_name not in names:
            yield path
            continue
        try:
            st = path.stat(follow_symlinks=False)
        except OSError:
            continue
        previous = sidecar.read_sidecar(paths.json) if json_name in names else None
        state = freshness_of(paths, previous, st, rule)
        if state == "stale" or (state == "degraded" and redo_degraded):
            yield path
