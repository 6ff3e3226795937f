"""Crash-safe file writes: same-folder hidden temp file, fsync, ``os.replace``, fsync the folder.

A reader sees either the old file or the new one, never a half-written one; after a crash
the only leftover is a hidden ``.<name>.promptd-tmp.<pid>.<hex>`` file, which
``sweep_temp_files`` removes at the next start.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
from pathlib import Path

import structlog

from daemon.errors import TransientError

TEMP_MARK = ".promptd-tmp."
_TEMP_RE = re.compile(r"^\..+\.promptd-tmp\.(?P<pid>\d+)\.[0-9a-f]+$", re.DOTALL)
_LONG_NAME_BYTES = 160  # keep the temp name under NAME_MAX (255 bytes) for any target name
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}

log = structlog.get_logger(__name__)


def temp_name(name: str, pid: int, token: str) -> str:
    """The hidden temp file name used while writing ``name`` (long names are hashed)."""
    if len(os.fsencode(name)) > _LONG_NAME_BYTES:
        name = hashlib.sha256(os.fsencode(name)).hexdigest()[:32]
    return f".{name}{TEMP_MARK}{pid}.{token}"


def is_temp_name(name: str) -> bool:
    """True when ``name`` is one of our in-progress or abandoned temp files."""
    return _TEMP_RE.match(name) is not None


def write_error(path: Path, exc: OSError) -> TransientError:
    """A TransientError for a failed write of ``path``, saying what happened and what to do."""
    if exc.errno in _DISK_FULL:
        message = "disk full: cannot write the sidecar; free some space and it will be retried"
    elif exc.errno in {errno.EACCES, errno.EPERM, errno.EROFS}:
        message = (
            f"cannot write the sidecar ({exc.strerror}); make the folder writable "
            "for the promptd user and it will be retried"
        )
    else:
        message = f"cannot write the sidecar ({exc.strerror or exc}); it will be retried"
    return TransientError(message, path)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where the filesystem cannot sync folders."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    The file gets the mode a plain ``open()`` would give it (0o666 less the umask, so 0o644
    under the usual 022; set ``UMask=`` in the service to change it). On any failure the temp
    file is removed; an ``OSError`` is raised as ``TransientError`` naming ``path``.
    """
    tmp = path.with_name(temp_name(path.name, os.getpid(), secrets.token_hex(4)))
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        created = True
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        created = False
        fsync_dir(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if created:
            _unlink_quietly(tmp)


def _unlink_quietly(path: Path) -> None:
    """Remove ``path``; a file already gone is fine, anything else is logged, not raised."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("temp_file_not_removed", path=str(path), error=str(exc))


def sweep_temp_files(root: Path) -> list[Path]:
    """Remove promptd temp files left under ``root`` by a crash; returns the paths removed.

    Files named with this process's own pid are in flight and left alone. Symlinked folders
    are not followed. Run at daemon start, before the first write.
    """
    own_pid = str(os.getpid())
    removed: list[Path] = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            match = _TEMP_RE.match(name)
            if match is None or match["pid"] == own_pid:
                continue
            path = Path(folder, name)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("temp_file_not_removed", path=str(path), error=str(exc))
                continue
            removed.append(path)
    return sorted(removed)
