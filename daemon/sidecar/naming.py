"""Where an image's sidecars go: ``photo.txt``/``photo.json``, or ``photo.jpg.txt`` when another
image in the folder shares the stem (or the stem form when the filename form would pass the
filesystem's 255-byte name limit). Pure string work over a folder's names (plus one listing)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.fs.names import MANIFEST_FILES
from daemon.fs.rawname import NAME_MAX, name_bytes

Naming = Literal["stem", "filename"]


@dataclass(frozen=True)
class SidecarPaths:
    """The two sidecar files of one image."""

    txt: Path
    json: Path


def _split(name: str) -> tuple[str, str]:
    """(stem, extension) of a file name the way ``Path.stem``/``Path.suffix`` split it
    (string operations only: scans call this for every name in a folder)."""
    i = name.rfind(".")
    if 0 < i < len(name) - 1:
        return name[:i], name[i:]
    return name, ""


@dataclass(frozen=True)
class FolderIndex:
    """A folder's names indexed once, so each image's sidecar names cost O(1), not O(folder)
    (a scan of a folder of n images would otherwise take O(n²))."""

    names: frozenset[str]
    extensions: frozenset[str]  # casefolded image extensions the index was built with
    stems: Counter[str]  # casefolded stems of the entries named like images
    whole: Counter[str]  # casefolded names of the entries named like images


def index_folder(folder_names: Iterable[str], image_extensions: Collection[str]) -> FolderIndex:
    """Index a folder's names for ``sidecar_names``."""
    extensions = frozenset(ext.casefold() for ext in image_extensions)
    names = frozenset(folder_names)
    stems: Counter[str] = Counter()
    whole: Counter[str] = Counter()
    for name in names:
        stem, ext = _split(name)
        if ext.casefold() in extensions:
            stems[stem.casefold()] += 1
            whole[name.casefold()] += 1
    return FolderIndex(names, extensions, stems, whole)


def sidecar_names(
    image_name: str,
    naming: Naming,
    folder_names: Collection[str] | FolderIndex,
    image_extensions: Collection[str],
) -> tuple[str, str]:
    """(txt name, json name) for ``image_name`` among the names in its folder.

    ``stem``: photo.jpg -> photo.txt; ``filename``: photo.jpg -> photo.jpg.txt. Sidecars are
    never shared: an image uses the filename form when another image in the folder has the
    same stem (a.png + a.jpg) or is named like its stem (a.jpg + a.jpg.png), whatever order
    they arrive in, or when the stem form would take a manifest's name (metadata_kohya.png). Stems and extensions are compared case-insensitively, so folders on
    case-insensitive filesystems are safe too. Pass a ``FolderIndex`` (``index_folder``)
    when asking for many images of one folder.

    A ``filename`` form longer than ``NAME_MAX`` bytes (``photo.jpg.json`` for a 251-byte
    name) falls back to the stem form when no other image shares the stem; otherwise the
    names returned are too long, and admit refuses the image before anything is written.
    """
    stem, ext = _split(image_name)
    if naming != "stem" and name_bytes(image_name) + len(".json") > NAME_MAX:
        naming = "stem"  # the filename form cannot exist; the stem form may, if unshared
    if naming != "stem":
        stem = image_name
    else:
        index = (
            folder_names
            if isinstance(folder_names, FolderIndex)
            else index_folder(folder_names, image_extensions)
        )
        key = stem.casefold()
        own = image_name in index.names and ext.casefold() in index.extensions
        same_stem = index.stems[key] - own
        named_like_stem = index.whole[key] - (own and image_name.casefold() == key)
        if same_stem > 0 or named_like_stem > 0 or f"{stem}.json" in MANIFEST_FILES:
            stem = image_name
    return f"{stem}.txt", f"{stem}.json"


def folder_names(folder: Path) -> list[str]:
    """The names in ``folder``; none when it is gone."""
    try:
        return os.listdir(folder)  # noqa: PTH208 - names only: no Path per entry (per image)
    except FileNotFoundError:
        return []


def sidecar_paths(
    image: Path,
    naming: Naming,
    image_extensions: Collection[str],
    index: FolderIndex | None = None,
) -> SidecarPaths:
    """The sidecar paths of ``image``, looking at its folder for stem collisions (or at
    ``index``, that folder's listing already indexed, when several of its images are asked)."""
    names = index if index is not None else folder_names(image.parent)
    txt, json_name = sidecar_names(image.name, naming, names, image_extensions)
    return SidecarPaths(image.with_name(txt), image.with_name(json_name))


def sidecar_candidates(image: Path) -> list[Path]:
    """Every path a sidecar of ``image`` may have: stem form (.txt, .json), then filename form."""
    stem = image.stem
    names = [f"{stem}.txt", f"{stem}.json", f"{image.name}.txt", f"{image.name}.json"]
    return [image.with_name(name) for name in names]
