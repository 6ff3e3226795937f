"""Sidecar files: where they go, what they say, and writing and reading them safely.

``photo.jpg`` gets ``photo.txt`` (one caption line) and ``photo.json`` (the record, schema
``promptd.sidecar/1``, see ``sidecar.schema.json`` beside this file). The write stage goes::

    paths = sidecar_paths(image, settings.naming, image_extensions)
    previous = read_sidecar(paths.json)     # freshness(previous, stat, fingerprint) to skip
    write_txt = "txt" in settings.outputs and plan_txt(paths, ..., previous) == "write"
    doc = build_sidecar(..., prompt=line, txt_name=paths.txt.name if write_txt else None, ...)
    write_sidecars(paths, txt_line=line if write_txt else None, doc=doc, outputs=settings.outputs)

- ``naming``: sidecar names, stem collisions, a folder's names indexed once.
- ``document``: the record built from the pipeline's records (pure); ``schema``: its JSON Schema.
- ``encode``: the record's bytes (hidden characters escaped, valid UTF-8 or an error).
- ``files``: capped reads, freshness, ownership of a caption, ordered atomic writes, removal.

May import: ``daemon.records``, ``daemon.errors``, ``daemon.clean``, ``daemon.fs``; never the
pipeline stages.
"""

from daemon.fs.atomic import is_temp_name, sweep_temp_files, write_atomic
from daemon.sidecar.document import (
    SCHEMA_ID,
    build_error_sidecar,
    build_sidecar,
    check_txt_line,
    txt_bytes,
)
from daemon.sidecar.encode import dump_sidecar
from daemon.sidecar.files import (
    freshness,
    json_is_foreign,
    own_txt,
    plan_txt,
    read_sidecar,
    remove_sidecars,
    txt_is_ours,
    write_sidecars,
)
from daemon.sidecar.naming import (
    FolderIndex,
    SidecarPaths,
    folder_names,
    index_folder,
    sidecar_candidates,
    sidecar_names,
    sidecar_paths,
)
from daemon.sidecar.schema import validate_sidecar

__all__ = [
    "SCHEMA_ID",
    "FolderIndex",
    "SidecarPaths",
    "build_error_sidecar",
    "build_sidecar",
    "check_txt_line",
    "dump_sidecar",
    "folder_names",
    "freshness",
    "index_folder",
    "is_temp_name",
    "json_is_foreign",
    "own_txt",
    "plan_txt",
    "read_sidecar",
    "remove_sidecars",
    "sidecar_candidates",
    "sidecar_names",
    "sidecar_paths",
    "sweep_temp_files",
    "txt_bytes",
    "txt_is_ours",
    "validate_sidecar",
    "write_atomic",
    "write_sidecars",
]
