"""The on-disk cache of label text embeddings, so CLIP's text encoder runs once per label set.

One file per (model, tables, precision) under ``<cache_dir>/text-embeddings/``: a safetensors
file named by a sha256 key, holding one L2-normalised float32 matrix per table (a row per label)
and, in its metadata, the format version, the model identity and the tables with their labels.
The file is written atomically; a file that cannot be read or does not match the tables it is
meant for is ignored (logged) and rebuilt, never fatal. Editing a label changes the key, so a
new entry is computed and the old one is simply no longer used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import structlog
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from daemon.errors import TransientError
from daemon.fs.atomic import write_atomic

FORMAT_VERSION = 1
SUBDIR = "text-embeddings"

Tables = Mapping[str, tuple[str, ...]]
Embeddings = dict[str, torch.Tensor]

log = structlog.get_logger(__name__)


def model_identity(model: str, revision: str | None = None) -> str:
    """What makes text embeddings differ between models, as a string.

    A local folder is named by its resolved path plus the name, size and mtime of each file in
    it (so replacing the weights invalidates the cache); a hub id by the id and the revision
    (commit) it resolved to, when known.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        files = []
        for path in sorted(folder.iterdir()):
            if path.is_file():
                stat = path.stat()
                files.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return json.dumps({"folder": str(folder.resolve()), "files": files})
    return json.dumps({"hub": model, "revision": revision})


def cache_key(identity: str, tables: Tables, dtype: str) -> str:
    """sha256 over the format version, the model identity, the precision and every label."""
    document = {
        "format": FORMAT_VERSION,
        "model": identity,
        "dtype": dtype,
        "tables": [[name, list(labels)] for name, labels in tables.items()],
    }
    return hashlib.sha256(json.dumps(document, ensure_ascii=False).encode()).hexdigest()


def entry_path(cache_dir: Path, key: str) -> Path:
    """The file that holds the embeddings for ``key``."""
    return cache_dir / SUBDIR / f"{key}.safetensors"


def load_embeddings(cache_dir: Path, key: str, tables: Tables) -> Embeddings | None:
    """The cached embeddings for ``key``, or None when missing, unreadable or not for ``tables``."""
    path = entry_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            stored = json.loads(metadata.get("tables", "null"))
            embeddings = {name: handle.get_tensor(name) for name in tables}
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        log.warning("text_embedding_cache_unreadable", path=str(path), error=str(exc))
        return None
    problem = _mismatch(metadata, stored, tables, embeddings)
    if problem is not None:
        log.warning("text_embedding_cache_invalid", path=str(path), problem=problem)
        return None
    return embeddings


def save_embeddings(
    cache_dir: Path, key: str, identity: str, tables: Tables, embeddings: Mapping[str, torch.Tensor]
) -> Path | None:
    """Write the embeddings atomically; returns the file, or None (logged) when it cannot."""
    path = entry_path(cache_dir, key)
    tensors = {
        name: embeddings[name].detach().to("cpu", torch.float32).contiguous() for name in tables
    }
    metadata = {
        "format": str(FORMAT_VERSION),
        "model": identity,
        "tables": json.dumps({name: list(labels) for name, labels in tables.items()}),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, save_safetensors(tensors, metadata=metadata))
    except (OSError, TransientError) as exc:
        log.warning("text_embedding_cache_not_written", path=str(path), error=str(exc))
        return None
    return path


def _mismatch(
    metadata: Mapping[str, str],
    stored: object,
    tables: Tables,
    embeddings: Mapping[str, torch.Tensor],
) -> str | None:
    """Why a cache entry does not fit ``tables``, or None when it does."""
    if metadata.get("format") != str(FORMAT_VERSION):
        return f"format {metadata.get('format')!r}, expected {FORMAT_VERSION}"
    if stored != {name: list(labels) for name, labels in tables.items()}:
        return "the labels differ"
    widths = {int(matrix.shape[-1]) for matrix in embeddings.values()}
    for name, matrix in embeddings.items():
        if matrix.dtype != torch.float32 or matrix.ndim != 2:
            return f"table {name!r}: not a float32 matrix"
        if matrix.shape[0] != len(tables[name]) or len(widths) != 1:
            return f"table {name!r}: shape {tuple(matrix.shape)} does not fit its labels"
        if not bool(torch.isfinite(matrix).all()):
            return f"table {name!r}: not finite"
    return None
