"""The *admit* stage: is this path an image promptd should (re)do, and under which rule?

Eligible by name, inside an inbox and not in an ignored folder, a regular file (symlinks are
never followed: a link could lead anywhere), governed by a valid rule, with sidecar names the
filesystem can hold, and not already up to date. A "no" is a ``Result`` with the reason
(skipped, held, failed), never an exception. ``discover`` lists the candidates under the files
and folders ``promptd process`` is given, and reports the links it does not follow.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon import sidecar
from daemon.config import Config, Mode
from daemon.config.rules import fingerprint_for
from daemon.errors import ConfigError
from daemon.fs.names import is_ignored_name
from daemon.fs.rawname import NAME_MAX, name_bytes
from daemon.fs.treewalk import is_ignored_path, scan
from daemon.pipeline.context import Context
from daemon.records import EffectiveRule, Result


@dataclass(frozen=True)
class Admitted:
    """An image that needs (re)processing, with the rule that governs it."""

    path: Path
    stat: os.stat_result
    rule: EffectiveRule
    sidecars: sidecar.SidecarPaths
    previous: dict[str, Any] | None


SYMLINK_REASON = (
    "a symbolic link: promptd never follows links (it could lead outside the inbox); "
    "copy the image into the inbox instead"
)

# --- admit -------------------------------------------------------------------------------


def is_candidate(path: Path, config: Config) -> bool:
    """True when the name looks like an image promptd should handle (no stat)."""
    return path.suffix.lower() in config.images.extensions and not is_ignored_name(
        path.name, config.images.ignore
    )


def admit(
    path: Path,
    ctx: Context,
    *,
    force: bool = False,
    redo_degraded: bool = True,
    folders: dict[Path, sidecar.FolderIndex] | None = None,
) -> Admitted | Result:
    """Decide whether ``path`` needs work: eligible, governed by a valid rule, not up to date.

    ``folders`` caches each folder's indexed listing across a batch (the stem-collision check
    would otherwise list the whole folder once per image).
    """
    config = ctx.config
    if not is_candidate(path, config):
        return Result(path, "skipped", "not an image name promptd handles")
    if path.is_symlink():
        return Result(path, "skipped", SYMLINK_REASON)
    found = ctx.rules.locate(path)  # (root, resolved path); a symlink file is refused below
    if found is None or is_ignored_path(found[1], found[0], extra=config.images.ignore):
        return Result(path, "skipped", "outside every inbox, or inside an ignored folder")
    try:
        st = path.stat(follow_symlinks=False)
    except FileNotFoundError:
        return Result(path, "skipped", "file vanished")
    if not stat.S_ISREG(st.st_mode):  # symlinks are never followed
        return Result(path, "skipped", "not a regular file")
    try:
        rule = ctx.rules.resolve(path)
    except ConfigError as exc:
        return Result(path, "held", f"held by an invalid rule file: {exc}")
    if ctx.mode_override is not None and ctx.mode_override != rule.settings.mode:
        rule = _with_mode(rule, ctx.mode_override, config)
    index = None
    if folders is not None:
        index = folders.get(path.parent)
        if index is None:
            index = folders[path.parent] = sidecar.index_folder(
                sidecar.folder_names(path.parent), config.images.extensions
            )
    paths = sidecar.sidecar_paths(path, rule.settings.naming, config.images.extensions, index)
    longest = max(name_bytes(paths.txt.name), name_bytes(paths.json.name))
    if longest > NAME_MAX:
        return Result(path, "failed", _too_long(path.name, longest))
    previous = sidecar.read_sidecar(paths.json)
    if previous is None and sidecar.json_is_foreign(paths.json):
        return Result(
            path,
            "failed",
            f"{paths.json.name} exists and was not written by promptd; move it away "
            "or set naming to the other form in a .promptd.yaml",
        )
    if not force:
        state = freshness_of(paths.txt, previous, st, rule)
        if state == "fresh" or (state == "degraded" and not redo_degraded):
            return Result(path, "skipped", f"up to date ({state})")
    return Admitted(path, st, rule, paths, previous)


def _too_long(name: str, longest: int) -> str:
    """Why an image whose sidecar names cannot exist is refused, and what to do."""
    return (
        f"the name is {name_bytes(name)} bytes: its sidecar would be named with {longest} "
        f"bytes, over the filesystem's {NAME_MAX}-byte limit; nothing was written; rename "
        f"the image to at most {NAME_MAX - len('.json')} bytes"
    )


def _with_mode(rule: EffectiveRule, mode: Mode, config: Config) -> EffectiveRule:
    settings = rule.settings.model_copy(update={"mode": mode})
    return EffectiveRule(settings, rule.sources, fingerprint_for(settings, config))


def freshness_of(
    txt_path: str | os.PathLike[str],
    previous: dict[str, Any] | None,
    st: os.stat_result,
    rule: EffectiveRule,
) -> str:
    """fresh | degraded | stale, from the stat and the previous .json only (no hashing)."""
    if "json" in rule.settings.outputs:
        return "stale" if previous is None else sidecar.freshness(previous, st, rule.fingerprint)
    # Without a .json there is no record of settings: a .txt newer than the image counts.
    try:
        return "fresh" if Path(txt_path).stat().st_mtime_ns >= st.st_mtime_ns else "stale"
    except FileNotFoundError:
        return "stale"


def discover(
    targets: Sequence[Path],
    config: Config,
    on_symlink: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Every candidate image under the given files and folders (hidden folders skipped);
    each link to an image or a folder, not followed, goes to ``on_symlink``."""
    for target in targets:
        if target.is_symlink() and on_symlink is not None:
            on_symlink(target)
        elif target.is_dir():
            yield from sorted(
                scan(
                    target,
                    is_candidate=lambda p: is_candidate(p, config),
                    ignore=config.images.ignore,
                    on_symlink=on_symlink,
                )
            )
        elif is_candidate(target, config):
            yield target
