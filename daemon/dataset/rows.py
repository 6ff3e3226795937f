"""A folder's images as dataset rows, read from the promptd records beside them.

One walk of the tree (hidden and ignored folders pruned, symlinks never followed, a subtree
left out when ``prune`` says so), one stat per record, caption and image, and a read of the
records and captions that changed since the last walk (``RowCache``): linear in the folder.
An image is listed only with an ``ok`` or ``degraded`` record that still describes it (same
size and mtime); its caption is its .txt (what trainers read, the user's edit included) or,
without one, the record's prompt. Records are untrusted: a field of the wrong type, a name
that points outside its folder or a caption that is not UTF-8 leaves the image out or falls
back to the record's prompt.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from daemon.fs.names import MANIFEST_FILES, RULE_FILE, is_ignored_name
from daemon.sidecar import read_sidecar

LISTED = ("ok", "degraded")
_MAX_CAPTION_BYTES = 64 * 1024
_MAX_TAGS = 64
Signature = tuple[int, int] | None  # (size, mtime_ns) of a file; None when there is none


@dataclass(frozen=True)
class Row:
    """One image of a dataset: where it is and what trainers read for it."""

    file_name: str  # POSIX path relative to the dataset folder
    text: str  # the caption
    negative_prompt: str
    tags: tuple[str, ...]
    status: str  # ok | degraded
    shared_stem: bool = False  # another image in its folder has the same stem (a.png, a.jpg)
    extra_tags: tuple[str, ...] = ()  # the tags the caption does not already hold


@dataclass
class RowCache:
    """Rows kept between walks, keyed by record path, valid while the files are unchanged."""

    rows: dict[str, tuple[tuple[Signature, Signature, Signature], Row | None]] = field(
        default_factory=dict
    )


def scan_rows(
    root: Path,
    extensions: Collection[str],
    *,
    ignore: Collection[str] = (),
    prune: Callable[[Path], bool] | None = None,
    cache: RowCache | None = None,
) -> list[Row]:
    """Every listed image below ``root`` as a row, sorted by ``file_name``."""
    exts = tuple(ext.lower() for ext in extensions)
    cache = cache if cache is not None else RowCache()
    kept: dict[str, tuple[tuple[Signature, Signature, Signature], Row | None]] = {}
    rows: dict[str, tuple[int, Row]] = {}  # file_name -> (record mtime, row): newest wins
    patterns = tuple(ignore)
    for folder, entries in _walk(root, patterns, prune):
        relative = os.path.relpath(folder, root)
        prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        images = _ImageIndex.of(entries, exts, patterns)
        for name, entry in entries.items():
            if not name.endswith(".json") or name in MANIFEST_FILES:
                continue
            found = _row_for(entry, entries, images, prefix, cache, kept)
            if found is not None:
                mtime, row = found
                if row.file_name not in rows or rows[row.file_name][0] < mtime:
                    rows[row.file_name] = (mtime, row)
    cache.rows = kept
    return [rows[name][1] for name in sorted(rows)]


def _walk(
    root: Path, ignore: tuple[str, ...], prune: Callable[[Path], bool] | None
) -> Iterator[tuple[str, dict[str, os.DirEntry[str]]]]:
    """Each folder below ``root`` with its regular files by name, depth first."""
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        files: dict[str, os.DirEntry[str]] = {}
        subfolders = []
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    if entry.is_dir(follow_symlinks=False):
                        if not is_ignored_name(entry.name, ignore):
                            subfolders.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        files[entry.name] = entry
        except OSError:
            continue
        if folder != str(root) and RULE_FILE in files and prune and prune(Path(folder)):
            continue  # this folder keeps its own manifests
        stack.extend(sorted(subfolders, reverse=True))
        yield folder, files


def _signature(entry: os.DirEntry[str] | None) -> Signature:
    if entry is None:
        return None
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class _ImageIndex:
    """A folder's images by name and by stem, built once per folder."""

    by_name: dict[str, os.DirEntry[str]]
    by_stem: dict[str, list[os.DirEntry[str]]]

    @classmethod
    def of(
        cls,
        entries: dict[str, os.DirEntry[str]],
        extensions: tuple[str, ...],
        ignore: tuple[str, ...],
    ) -> _ImageIndex:
        by_name: dict[str, os.DirEntry[str]] = {}
        by_stem: dict[str, list[os.DirEntry[str]]] = {}
        for name, entry in entries.items():
            dot = name.rfind(".")
            if dot > 0 and name[dot:].lower() in extensions and not is_ignored_name(name, ignore):
                by_name[name] = entry
                by_stem.setdefault(name[:dot], []).append(entry)
        return cls(by_name, by_stem)

    def shared(self, name: str) -> bool:
        """Whether another image in the folder has the stem of ``name``."""
        dot = name.rfind(".")
        return dot > 0 and len(self.by_stem.get(name[:dot], ())) > 1

    def for_record(self, stem: str) -> os.DirEntry[str] | None:
        """The image a record named ``stem.json`` may describe: ``stem`` itself (filename
        form, photo.jpg.json), else the one image with that stem (stem form, photo.json)."""
        if stem in self.by_name:
            return self.by_name[stem]
        same = self.by_stem.get(stem, [])
        return same[0] if len(same) == 1 else None


def _row_for(
    record: os.DirEntry[str],
    entries: dict[str, os.DirEntry[str]],
    images: _ImageIndex,
    prefix: str,
    cache: RowCache,
    kept: dict[str, tuple[tuple[Signature, Signature, Signature], Row | None]],
) -> tuple[int, Row] | None:
    """The row of the image ``record`` describes, or None; from the cache when unchanged."""
    stem = record.name[: -len(".json")]
    image = images.for_record(stem)
    txt = entries.get(stem + ".txt")
    signatures = (_signature(record), _signature(image), _signature(txt))
    if signatures[0] is None or signatures[1] is None:
        return None
    cached = cache.rows.get(record.path)
    if cached is not None and cached[0] == signatures:
        row = cached[1]
    else:
        row = _read_row(record, image, txt, prefix, signatures)
    if row is not None:
        shared = images.shared(image.name if image is not None else "")
        row = row if row.shared_stem == shared else replace(row, shared_stem=shared)
    kept[record.path] = (signatures, row)
    return (signatures[0][1], row) if row is not None else None


def _read_row(
    record: os.DirEntry[str],
    image: os.DirEntry[str] | None,
    txt: os.DirEntry[str] | None,
    prefix: str,
    signatures: tuple[Signature, Signature, Signature],
) -> Row | None:
    json_signature, image_signature, txt_signature = signatures
    doc = read_sidecar(record.path)
    if doc is None or image is None or doc.get("status") not in LISTED:
        return None
    described = doc.get("image")
    if not isinstance(described, dict) or described.get("file") != image.name:
        return None
    if image_signature != (described.get("bytes"), described.get("mtime_ns")):
        return None  # the image changed since: it is redone, and listed again then
    prompt, negative = doc.get("prompt"), doc.get("negative_prompt")
    if not isinstance(prompt, str) or not isinstance(negative, str):
        return None
    file_name = prefix + image.name
    try:
        file_name.encode("utf-8")
    except UnicodeEncodeError:  # a name no JSON reader could find again
        return None
    if txt is not None and _unchanged_own_caption(
        doc, txt.name, prompt, json_signature, txt_signature
    ):
        caption = prompt.strip()
    else:
        caption = _caption(txt) or prompt.strip()
    if not caption:
        return None
    tags = _tags(doc.get("tags"))
    in_caption = {piece.strip().casefold() for piece in caption.split(",")}
    extra = tuple(tag for tag in tags if tag.casefold() not in in_caption)
    return Row(file_name, caption, negative, tags, str(doc["status"]), extra_tags=extra)


def _unchanged_own_caption(
    doc: dict[str, Any], name: str, prompt: str, record: Signature, txt: Signature
) -> bool:
    """True when the .txt is the one promptd wrote with the record and not touched since: it
    names it, it is the prompt's size and no newer than the record (written just before it).
    Then the recorded prompt is its line, and the file need not be read."""
    outputs = doc.get("outputs")
    return (
        isinstance(outputs, dict)
        and outputs.get("txt") == name
        and record is not None
        and txt is not None
        and txt[0] == len(prompt.encode("utf-8")) + 1
        and txt[1] <= record[1]
    )


def _caption(txt: os.DirEntry[str] | None) -> str:
    """The first line of the image's .txt, or "" when there is none or it is not usable."""
    if txt is None:
        return ""
    try:
        with open(txt.path, "rb") as handle:  # noqa: PTH123 - a DirEntry path, per image
            data = handle.read(_MAX_CAPTION_BYTES)
        lines = data.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    return lines[0].strip() if lines else ""


def _tags(value: Any) -> tuple[str, ...]:
    """A record's tags, kept only if they are plain one-line strings without commas."""
    if not isinstance(value, list):
        return ()
    tags = value[:_MAX_TAGS]
    if all(
        isinstance(t, str) and t.isprintable() and t == t.strip() != "" and "," not in t
        for t in tags
    ):
        return tuple(tags)  # what promptd writes
    cleaned = [" ".join(t.split()) for t in tags if isinstance(t, str)]
    return tuple(t for t in cleaned if t and "," not in t)
