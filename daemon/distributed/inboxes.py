"""Inbox names and this machine's folders: the producer names what it found, a worker finds it.

Each machine maps every shared inbox's *name* to its own folder for it: ``distributed.inboxes``
(name -> folder) first, then each ``inbox`` folder under its folder name. The producer turns a
path into a key (``key_for``); a worker turns a key back into a path on its own mount
(``local_path``), refusing one that lands outside the mapped folder (a symlinked parent).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from daemon.config import Config
from daemon.config.distributed import INBOX_NAME
from daemon.distributed.keys import ImageKey
from daemon.errors import ConfigError


def inbox_map(config: Config, *, watched: bool = True) -> dict[str, Path]:
    """Inbox name -> this machine's absolute folder; raises ConfigError on a clash or bad name.

    ``watched``: the `inbox` folders are watched here (the producer), so each needs a name of
    its own. A worker only maps names: an explicit entry wins over an `inbox` folder (such as
    the default ``./inbox``) of the same folder name.
    """
    base = config.source.parent if config.source is not None else Path.cwd()
    named = {
        name: (base / Path(folder).expanduser()).resolve()
        for name, folder in config.distributed.inboxes.items()
    }
    mapped = set(named.values())
    problems = []
    for folder in config.inbox:
        if folder in mapped:
            continue
        name = folder.name
        if not INBOX_NAME.match(name):
            problems.append(
                f"distributed.inboxes: name the inbox {folder} (its folder name {name!r} "
                "is not a usable inbox name)"
            )
        elif name in named and named[name] != folder:
            if not watched:
                continue
            problems.append(
                f"distributed.inboxes: inboxes {named[name]} and {folder} are both named "
                f"{name!r}; give one of them another name"
            )
        else:
            named[name] = folder
    if problems:
        raise ConfigError(problems[0], config.source, tuple(problems))
    return named


def key_for(path: Path, st: os.stat_result, names: Mapping[Path, str]) -> ImageKey | None:
    """The key of ``path`` under the inbox folder that holds it (``names``: folder -> name)."""
    for root, name in names.items():
        try:
            relative = path.relative_to(root)
        except ValueError:
            continue
        if relative.parts:
            return ImageKey(name, relative.as_posix(), st.st_size, st.st_mtime_ns)
    return None


def local_path(key: ImageKey, folders: Mapping[str, Path]) -> tuple[Path | None, str]:
    """Where ``key``'s image is on this machine, or (None, why not)."""
    root = folders.get(key.inbox)
    if root is None:
        known = ", ".join(sorted(folders)) or "none"
        return None, f"inbox {key.inbox!r} is not mapped on this machine (known: {known})"
    candidate = root.joinpath(*key.path.split("/"))
    parent = os.path.realpath(candidate.parent)
    real_root = os.path.realpath(root)
    if os.path.commonpath([parent, real_root]) != real_root:
        return None, "the path leads outside the inbox (a symlinked folder)"
    return candidate, ""


def wait_visible(path: Path, key: ImageKey, wait_s: float) -> os.stat_result | None:
    """The file's stat once this machine sees it as the producer did; None after ``wait_s``.

    Another NFS client may not see a new file, or may see old attributes, for up to a minute
    (attribute caching); so a missing file, or one older than the producer saw, is polled
    with growing pauses until ``wait_s`` has passed.
    """
    deadline = time.monotonic() + wait_s
    pause = 0.25
    while True:
        try:
            st = path.stat(follow_symlinks=False)
            if st.st_mtime_ns >= key.mtime_ns:
                return st
        except FileNotFoundError:
            pass
        except OSError:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(pause, left))
        pause = min(pause * 2, 5.0)


def absence_reason(path: Path, root: Path | None) -> str:
    """Why a worker cannot see ``path``, in words a person can act on."""
    if root is None or not root.is_dir():
        return f"the inbox folder {root} does not exist here: is the share mounted?"
    try:
        empty = next(os.scandir(root), None) is None
    except OSError as exc:
        return f"the inbox folder {root} cannot be listed ({exc.strerror})"
    if empty:
        return f"the inbox folder {root} is empty here: is the share mounted?"
    return "not (yet) visible here: moved or deleted, or hidden by the NFS attribute cache"
