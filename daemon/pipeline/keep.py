"""Keeping an upload (``api.save_to``): the image and its sidecars written into one folder.

The image is named by its content (``upload-<sha256 prefix>.<format>``), never by the
client's file name. It is first written under a hidden temporary name, its sidecars are
written against that file's size and mtime, and only then is it renamed into place, so a
watcher on the folder finds an image whose record is already current and does not do it
again (unless the folder's rule differs from the request's, e.g. a user prompt: then the
folder's rule wins on the next pass, as for any image in an inbox).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from daemon import sidecar
from daemon.errors import TransientError
from daemon.fs.atomic import fsync_dir, temp_name, write_atomic
from daemon.pipeline.upload import UploadOutcome, upload_document


@dataclass(frozen=True)
class Kept:
    """Where an upload was saved, and the document written beside it."""

    image: Path
    sidecars: tuple[Path, ...]
    document: dict[str, object]


def kept_name(outcome: UploadOutcome) -> str:
    """``upload-<first 16 hex of sha256>.<format>``, e.g. ``upload-1f3a93c0d2e4b5a6.png``."""
    extension = {"JPEG": "jpg", "TIFF": "tif"}.get(outcome.loaded.format, outcome.loaded.format)
    return f"upload-{outcome.loaded.sha256[:16]}.{extension.lower()}"


def keep_upload(
    outcome: UploadOutcome, data: bytes, folder: Path, extensions: tuple[str, ...]
) -> Kept:
    """Write ``data`` and its sidecars into ``folder`` (created); TransientError if the disk refuses."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransientError(f"cannot create api.save_to ({exc.strerror})", folder) from exc
    image = folder / kept_name(outcome)
    settings = outcome.rule.settings
    paths = sidecar.sidecar_paths(image, settings.naming, extensions)
    previous = sidecar.read_sidecar(paths.json)
    plan = sidecar.plan_txt(paths, settings.existing_caption, previous)
    txt_name = paths.txt.name if plan == "write" and "txt" in settings.outputs else None
    staged: Path | None = None
    try:
        if image.is_file() and image.stat().st_size == len(data):
            st = image.stat()  # the same content was kept before: only the sidecars are redone
        else:
            staged = folder / temp_name(image.name, os.getpid(), secrets.token_hex(4))
            write_atomic(staged, data)
            st = staged.stat()
        loaded = replace(outcome.loaded, path=image, mtime_ns=st.st_mtime_ns)
        doc = upload_document(
            outcome,
            image=loaded,
            txt_name=txt_name,
            txt_kept=plan == "keep" and "txt" in settings.outputs,
        )
        written = sidecar.write_sidecars(
            paths, txt_line=outcome.line if txt_name else None, doc=doc, outputs=settings.outputs
        )
        if staged is not None:
            staged.replace(image)
            staged = None
            fsync_dir(folder)
    except OSError as exc:
        raise TransientError(f"cannot keep the upload ({exc.strerror or exc})", image) from exc
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
    return Kept(image, written, doc)
