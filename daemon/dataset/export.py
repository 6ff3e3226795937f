"""`promptd export`: a folder's manifest written on demand, the same rows the daemon keeps.

Unlike the daemon's manifests, an export lists every image below the folder, including those
in subfolders that keep manifests of their own: it is the whole folder as one dataset.
"""

from __future__ import annotations

from pathlib import Path

from daemon.config import Config
from daemon.dataset.formats import FILE_NAMES, Format, build
from daemon.dataset.rows import scan_rows
from daemon.fs.atomic import write_atomic


def export_bytes(folder: Path, fmt: Format, config: Config) -> tuple[bytes, int]:
    """The manifest ``fmt`` of every listed image below ``folder``, and how many images."""
    root = folder.resolve()
    rows = scan_rows(root, config.images.extensions, ignore=config.images.ignore)
    return build(fmt, rows, root), len(rows)


def default_output(folder: Path, fmt: Format) -> Path:
    """Where an export goes without ``--out``: the manifest's usual name in the folder."""
    return folder / FILE_NAMES[fmt]


def write_export(folder: Path, fmt: Format, out: Path, config: Config) -> int:
    """Write the manifest to ``out`` atomically; returns how many images it lists."""
    data, count = export_bytes(folder, fmt, config)
    write_atomic(out, data)
    return count
