"""Reading and writing an image's sidecars: the capped read of a record, whether it is still
fresh, whether a caption is promptd's own, the ordered atomic write (.txt first, .json last),
and removing the sidecars of an image that is gone."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from daemon.fs.atomic import write_atomic
from daemon.fs.rawname import NAME_MAX, display_name, name_bytes, same_name
from daemon.sidecar.document import SCHEMA_ID, txt_bytes
from daemon.sidecar.encode import dump_sidecar
from daemon.sidecar.naming import SidecarPaths, sidecar_candidates

Freshness = Literal["fresh", "degraded", "stale"]
TxtPlan = Literal["write", "keep"]

_MAX_READ_BYTES = 16 * 1024 * 1024  # a sidecar is a few KiB; anything this big is not ours


def _read_capped(path: str | os.PathLike[str]) -> bytes | None:
    """The bytes of ``path``, or None when it is unreadable or too large to be ours.

    Plain ``os.open``/``os.read``: a start-up scan reads 100,000 of these small files.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > _MAX_READ_BYTES:
            return None
        data = os.read(fd, size + 1)  # one call: a regular file short of size + 1 is at EOF
        while len(data) > size and len(data) <= _MAX_READ_BYTES:  # it grew meanwhile
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        return data if len(data) <= _MAX_READ_BYTES else None
    except OSError:
        return None
    finally:
        os.close(fd)


def read_sidecar(json_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The promptd document at ``json_path``, or None when it is missing, unreadable or not ours."""
    data = _read_capped(json_path)
    if data is None:
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_ID:
        return None
    return doc


def json_is_foreign(json_path: Path) -> bool:
    """True when something that is not a promptd sidecar sits at ``json_path`` (do not replace it)."""
    return os.path.lexists(json_path) and read_sidecar(json_path) is None


def _field(doc: dict[str, Any], section: str, key: str) -> Any:
    """``doc[section][key]``, or None when the document does not have it."""
    part = doc.get(section)
    return part.get(key) if isinstance(part, dict) else None


def freshness(doc: dict[str, Any], st: os.stat_result, fingerprint: str) -> Freshness:
    """Whether ``doc`` still describes the image with stat ``st`` under the rule ``fingerprint``.

    stale: the file's size or mtime changed, or the rule did (or the record is malformed);
    degraded: unchanged, but produced by a fallback, so worth redoing; fresh: nothing to do
    (an ``error`` record for an unchanged file is fresh, so it is not retried forever).
    """
    if (
        _field(doc, "image", "bytes") != st.st_size
        or _field(doc, "image", "mtime_ns") != st.st_mtime_ns
        or _field(doc, "rule", "fingerprint") != fingerprint
    ):
        return "stale"
    status = doc.get("status")
    if status == "degraded":
        return "degraded"
    return "fresh" if status in ("ok", "error") else "stale"


def txt_is_ours(txt_path: Path, doc: dict[str, Any] | None) -> bool:
    """True when ``doc`` says promptd wrote ``txt_path`` and the file is unchanged since.

    The record names the .txt in its display form (``daemon.fs.rawname``); which image it
    belongs to is settled by the record's exact ``image`` name.
    """
    if doc is None or _field(doc, "outputs", "txt") != display_name(txt_path.name):
        return False
    expected = _field(doc, "outputs", "txt_sha256")
    data = _read_capped(txt_path)
    return data is not None and hashlib.sha256(data).hexdigest() == expected


def plan_txt(
    paths: SidecarPaths,
    existing_caption: Literal["keep", "overwrite"],
    previous_doc: dict[str, Any] | None,
) -> TxtPlan:
    """Write the .txt when there is none, it is ours, or the rule says overwrite; else keep it."""
    if not os.path.lexists(paths.txt):
        return "write"
    if paths.txt.is_dir():
        return "keep"
    if existing_caption == "overwrite" or txt_is_ours(paths.txt, previous_doc):
        return "write"
    return "keep"


def write_sidecars(
    paths: SidecarPaths,
    *,
    txt_line: str | None,
    doc: dict[str, Any],
    outputs: Collection[str],
) -> tuple[Path, ...]:
    """Write the .txt (when ``txt_line`` is given and wanted) then the .json, the done marker.

    Both files are serialised and their names checked before either is written, so a
    failure (a name too long, a record that cannot be encoded) leaves nothing on disk: never a
    .txt without its .json. Returns the paths written, in order. Raises ``ValueError`` for a
    bad caption line, a document whose ``outputs`` disagree with what is written, or a name
    longer than ``NAME_MAX`` bytes (programming errors: admit refuses such images), and
    ``TransientError`` when the disk refuses.
    """
    data = None
    if txt_line is not None and "txt" in outputs:
        data = txt_bytes(txt_line)
    payload = None
    if "json" in outputs:
        expected = (
            (display_name(paths.txt.name), hashlib.sha256(data).hexdigest())
            if data is not None
            else (None, None)
        )
        stated = (_field(doc, "outputs", "txt"), _field(doc, "outputs", "txt_sha256"))
        if stated != expected:
            raise ValueError(f"sidecar outputs {stated} do not match what is written {expected}")
        payload = dump_sidecar(doc)
    targets = [(paths.txt, data), (paths.json, payload)]
    for path, content in targets:
        if content is not None and name_bytes(path.name) > NAME_MAX:
            raise ValueError(f"{path.name!r} is longer than {NAME_MAX} bytes")
    written: list[Path] = []
    for path, content in targets:
        if content is not None:
            write_atomic(path, content)
            written.append(path)
    return tuple(written)


def _remove(path: Path, removed: list[Path]) -> None:
    """Unlink ``path`` if it is still there and note it."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    removed.append(path)


def _describes(doc: dict[str, Any] | None, image: Path) -> bool:
    """True when ``doc`` is a promptd record of the image named exactly like ``image``."""
    return doc is not None and same_name(doc.get("image"), image.name)


def own_txt(image: Path, doc: dict[str, Any]) -> Path | None:
    """The .txt that ``doc`` (a record of ``image``) says promptd wrote, if it names one."""
    shown = _field(doc, "outputs", "txt")
    for path in sidecar_candidates(image):
        if path.suffix == ".txt" and display_name(path.name) == shown:
            return path
    return None


def remove_sidecars(image: Path, doc: dict[str, Any] | None = None) -> list[Path]:
    """Remove the sidecars of a deleted or moved ``image``; returns what was removed.

    A .json goes only when it is a promptd record for this image's name; a .txt only when
    that record (or ``doc``, the last record known) says promptd wrote it unchanged. Captions
    the user wrote or edited stay. The .txt goes first, so a crash leaves the record behind.
    """
    removed: list[Path] = []
    candidates = sidecar_candidates(image)
    records = [(path, read_sidecar(path)) for path in candidates if path.suffix == ".json"]
    mine = [(path, rec) for path, rec in records if _describes(rec, image)]
    owners = [rec for _path, rec in mine] + ([doc] if _describes(doc, image) else [])
    for txt in (path for path in candidates if path.suffix == ".txt"):
        if any(txt_is_ours(txt, owner) for owner in owners):
            _remove(txt, removed)
    for path, _rec in mine:
        _remove(path, removed)
    return removed
