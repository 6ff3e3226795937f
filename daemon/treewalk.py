"""A fast walk over an inbox tree: ignored names pruned without a stat, symlinks never followed.

Which names are ignored is `daemon.names` (shared with the pipeline); the rule file
`.promptd.yaml` is hidden but never ignored, because its changes matter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .names import is_ignored_name
from .rules import RULE_FILE


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


def scan(
    root: Path,
    *,
    is_candidate: Callable[[Path], bool],
    ignore: Sequence[str] = (),
    rule_files: bool = False,
    on_error: Callable[[OSError], None] | None = None,
) -> Iterator[Path]:
    """Every candidate file below `root` (and every rule file, with `rule_files`), depth
    first, using `os.scandir` only.

    Ignored names are pruned without a stat; symlinks (files or folders) are neither yielded
    nor followed; a folder that cannot be read is reported to `on_error` and skipped. The
    caller decides which of the yielded paths are out of date.
    """
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                subfolders = []
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not is_ignored_name(entry.name, ignore):
                                subfolders.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            if entry.name == RULE_FILE:
                                if rule_files:
                                    yield Path(entry.path)
                                continue
                            if is_ignored_name(entry.name, ignore):
                                continue
                            path = Path(entry.path)
                            if is_candidate(path):
                                yield path
                    except OSError as exc:  # the entry vanished or cannot be stat'ed
                        if on_error is not None:
                            on_error(exc)
        except OSError as exc:
            if on_error is not None:
                on_error(exc)
            continue
        stack.extend(reversed(subfolders))


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
