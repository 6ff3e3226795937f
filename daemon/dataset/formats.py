"""The manifests trainers read, built from rows (pure: bytes out, no I/O).

- ``hf``: ``metadata.jsonl``, Hugging Face ``datasets``' imagefolder format (read by diffusers'
  ``train_text_to_image.py``): one JSON object per line, ``file_name`` relative to the folder
  that holds the file, the caption under ``text``, and ``negative_prompt``, ``tags`` (a list)
  and ``status``. Every row has every column, as imagefolder requires.
- ``kohya``: ``metadata_kohya.json``, what kohya's fine-tuning reads with ``--in_json`` (the
  shape ``merge_captions_to_metadata.py`` writes): image key -> ``{"caption", "tags"}``, tags a
  comma-separated string that kohya appends to the caption, so tags already in the caption are
  left out. The key is the image's path relative to the folder without its extension
  (``sub/001``): kohya looks it up as ``<train_data_dir>/<key><ext>`` for each extension it
  knows, which works in subfolders and stays valid when the folder is copied elsewhere. An
  image that lookup cannot find, or could confuse, gets its absolute path as key, which kohya
  takes as it is (its ``--full_path`` form): one whose stem another image shares (``a.png``,
  ``a.jpg``), or whose extension kohya does not glob for (``.gif``, ``.tiff``, ``.Jpg``).
- ``csv``: the hf columns as CSV (tags joined with ", "), for spreadsheets and other tools.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from daemon.dataset.rows import Row

Format = Literal["hf", "kohya", "csv"]
FILE_NAMES: dict[Format, str] = {
    "hf": "metadata.jsonl",
    "kohya": "metadata_kohya.json",
    "csv": "captions.csv",
}
COLUMNS = ("file_name", "text", "negative_prompt", "tags", "status")
# The endings kohya's glob_images tries after a key (library/train_util.py IMAGE_EXTENSIONS).
KOHYA_GLOB = frozenset(
    (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP")
)


def hf_jsonl(rows: Sequence[Row]) -> bytes:
    """metadata.jsonl: one object per image, every column in every row."""
    lines = [
        json.dumps(
            {
                "file_name": row.file_name,
                "text": row.text,
                "negative_prompt": row.negative_prompt,
                "tags": list(row.tags),
                "status": row.status,
            },
            ensure_ascii=False,
        )
        for row in rows
    ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def kohya_key(row: Row, folder: Path) -> str:
    """The key kohya finds an image by: its relative path without the extension when kohya's
    lookup finds exactly that image, else its absolute path."""
    stem, ext = posixpath.splitext(row.file_name)
    if ext in KOHYA_GLOB and not row.shared_stem:
        return stem
    return str(folder.joinpath(*row.file_name.split("/")))


def kohya_json(rows: Sequence[Row], folder: Path) -> bytes:
    """metadata_kohya.json for the images of ``folder``, one image per line."""
    lines = [
        f"{json.dumps(kohya_key(row, folder), ensure_ascii=False)}: "
        + json.dumps({"caption": row.text, "tags": ", ".join(row.extra_tags)}, ensure_ascii=False)
        for row in rows
    ]
    body = ",\n".join(lines)
    return ("{\n" + body + "\n}\n" if lines else "{}\n").encode("utf-8")


def csv_table(rows: Sequence[Row]) -> bytes:
    """The hf columns as CSV with a header row; tags joined with ", "."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        tags = ", ".join(row.tags)
        writer.writerow((row.file_name, row.text, row.negative_prompt, tags, row.status))
    return buffer.getvalue().encode("utf-8")


def build(fmt: Format, rows: Sequence[Row], folder: Path) -> bytes:
    """The manifest ``fmt`` for ``rows`` of ``folder``."""
    if fmt == "hf":
        return hf_jsonl(rows)
    if fmt == "kohya":
        return kohya_json(rows, folder)
    return csv_table(rows)
