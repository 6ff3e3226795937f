"""A fast walk over an inbox tree: ignored names pruned without a stat, symlinks never followed
(but reported, so a user who links images in can be told why nothing happens).

Which names are ignored is `daemon.fs.names` (shared with the pipeline); the rule file
`.promptd.yaml` is hidden but never ignored, because its changes matter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from daemon.fs.names import RULE_FILE, is_ignored_name


def is_ignored_path(path: Path, root: Path, *, extra: Sequence[str] = ()) -> bool:
    """Whether `path` lies outside `root`, or it or a folder between it and `root` is ignored
    (the rule file's own name excepted)."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return True
    if not parts:
        return False
    *folders, name = parts
    if any(is_ignored_name(folder, extra) for folder in folders):
        return True
    return name != RULE_FILE and is_ignored_name(name, extra)


def is_reported_link(entry: os.DirEntry[str], looks_like_image: Callable[[str], bool]) -> bool:
    """Whether a symlink entry is worth telling the user about: it is named like an image, or
    it leads to a folder (a stat of the target, nothing read); other links are noise."""
    if looks_like_image(entry.name):
        return True
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def walk_folders(
    root: Path,
    *,
    ignore: Sequence[str] = (),
    on_error: Callable[[OSError], None] | None = None,
    on_symlink: Callable[[os.DirEntry[str]], None] | None = None,
) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
    """Each folder below `root` (depth first) with its regular files, as `os.scandir` gives them.

    Ignored folder names are pruned without a stat; symlinks are neither listed nor followed,
    each not-ignored one goes to `on_symlink`; a folder that cannot be read is reported to
    `on_error` and skipped. Works on strings and `DirEntry` objects only, so a scan of
    100,000 files builds no `Path` per entry.
    """
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        files: list[os.DirEntry[str]] = []
        subfolders: list[str] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_symlink():
                            if on_symlink is not None and not is_ignored_name(entry.name, ignore):
                                on_symlink(entry)
                        elif entry.is_dir(follow_symlinks=False):
                            if not is_ignored_name(entry.name, ignore):
                                subfolders.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            files.append(entry)
                    except OSError as exc:  # the entry vanished or cannot be stat'ed
                        if on_error is not None:
                            on_error(exc)
        except OSError as exc:
            if on_error is not None:
                on_error(exc)
            continue
        stack.extend(reversed(subfolders))
        yield folder, files


def scan(
    root: Path,
    *,
    is_candidate: Callable[[Path], bool],
    ignore: Sequence[str] = (),
    rule_files: bool = False,
    on_error: Callable[[OSError], None] | None = None,
    on_symlink: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Every candidate file below `root` (and every rule file, with `rule_files`), depth
    first; see `walk_folders` for what is pruned. Links to images or folders go to
    `on_symlink`, not followed. The caller decides what is out of date."""

    def link(entry: os.DirEntry[str]) -> None:
        if on_symlink is not None and is_reported_link(
            entry, lambda name: is_candidate(Path(entry.path))
        ):
            on_symlink(Path(entry.path))

    for _folder, files in walk_folders(root, ignore=ignore, on_error=on_error, on_symlink=link):
        for entry in files:
            if entry.name == RULE_FILE:
                if rule_files:
                    yield Path(entry.path)
            elif not is_ignored_name(entry.name, ignore):
                path = Path(entry.path)
                if is_candidate(path):
                    yield path


def count_folders(root: Path) -> int:
    """How many folders (root included) a recursive inotify watch on `root` uses: watchdog
    watches every folder, hidden and ignored ones too, but follows no symlinks."""
    count, stack = 0, [str(root)]
    while stack:
        folder = stack.pop()
        count += 1
        try:
            with os.scandir(folder) as entries:
                stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return count
