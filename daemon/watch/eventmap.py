"""What a watchdog event means for promptd: a pure mapping from an event to actions.

Events are hints, never facts: created and modified say "look at this path" (weak), a
close-after-write or a rename into place says "this is probably complete" (strong). A
folder that appears is walked, because files inside may have arrived before its watch
did (`mkdir -p a/b && cp x a/b/`). Synthetic events (watchdog's walk of a folder that moved
in or within) are skipped: the watcher walks such folders itself, with strong hints.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchdog.events import FileSystemEvent

from daemon.fs.names import RULE_FILE

ActionKind = Literal["hint", "forget", "forget_under", "walk", "removed", "moved", "rules"]


@dataclass(frozen=True)
class Action:
    """One thing the watcher should do.

    hint(path, strong) · forget(path) · forget_under(folder) · walk(folder, strong; then
    rules(path) and rules(other) if rule files were found inside) · removed(path) ·
    moved(path -> other) · rules(folder).
    """

    kind: ActionKind
    path: Path
    other: Path | None = None
    strong: bool = False


def _path(raw: bytes | str) -> Path | None:
    return Path(os.fsdecode(raw)) if raw else None


Wanted = Callable[[Path, bool], bool]


def actions_for(event: FileSystemEvent, wanted: Wanted) -> list[Action]:
    """The actions for one event. `wanted(path, is_dir)` says whether a path lies in the inbox
    and is not ignored, and (for a file) is a candidate image or a rule file."""
    if event.is_synthetic:
        return []
    src, dest = _path(event.src_path), _path(event.dest_path)
    kind = event.event_type
    if event.is_directory:
        return _folder_actions(kind, src, dest, wanted)
    if kind == "moved":
        return _moved_file(src, dest, wanted)
    if src is None:
        return []
    if kind in ("created", "modified", "closed"):
        return [Action("hint", src, strong=kind == "closed")] if wanted(src, False) else []
    if kind == "deleted":
        return [Action("forget", src), *_gone(src, wanted)]
    return []  # opened, closed without writing, attributes only


def _gone(path: Path, wanted: Wanted) -> list[Action]:
    if not wanted(path, False):
        return []
    if path.name == RULE_FILE:
        return [Action("rules", path.parent)]
    return [Action("removed", path)]


def _moved_file(src: Path | None, dest: Path | None, wanted: Wanted) -> list[Action]:
    """A rename: within the inbox, into it (no `src`), or out of it (no `dest`)."""
    actions: list[Action] = []
    src_image: Path | None = None
    if src is not None:
        actions.append(Action("forget", src))
        if wanted(src, False):
            if src.name == RULE_FILE:
                actions.append(Action("rules", src.parent))
            else:
                src_image = src
    if dest is not None and wanted(dest, False):
        if src_image is not None and dest.name != RULE_FILE:
            actions.append(Action("moved", src_image, dest))
        actions.append(Action("hint", dest, strong=True))
    elif src_image is not None:
        actions.append(Action("removed", src_image))
    return actions


def _folder_actions(kind: str, src: Path | None, dest: Path | None, wanted: Wanted) -> list[Action]:
    if src is not None and kind == "created":
        return [Action("walk", src, strong=False)] if wanted(src, True) else []
    if src is not None and kind == "deleted":
        return [Action("forget_under", src)]
    if kind != "moved":
        return []
    actions: list[Action] = []
    src_ok = src is not None and wanted(src, True)
    if src is not None:
        actions.append(Action("forget_under", src))
    if dest is not None and wanted(dest, True):
        if src is not None and src_ok:
            actions.append(Action("moved", src, dest))
            actions.append(Action("walk", dest, src, strong=True))
        else:
            actions.append(Action("walk", dest, strong=True))
    elif src is not None and src_ok:
        actions.append(Action("rules", src))
    return actions
