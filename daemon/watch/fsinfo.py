"""Facts about the filesystem an inbox lives on: its type, and the inotify limits.

inotify only sees writes made through the local kernel, so an inbox on NFS, SMB, SSHFS or
another network or FUSE filesystem is watched by polling instead (watchdog#409, paperless#1975).
The functions that parse text are pure; the two that read /proc are thin wrappers.
"""

from __future__ import annotations

import re
from pathlib import Path

PROC_MOUNTS = Path("/proc/mounts")
INOTIFY_DIR = Path("/proc/sys/fs/inotify")
SYSCTL_FILE = "/etc/sysctl.d/90-promptd-inotify.conf"

# Filesystems whose changes may come from another machine (or from the host of a VM), so
# inotify misses them. Every `fuse.*` type counts too: FUSE sees only writes made through it.
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb3",
        "smbfs",
        "ncpfs",
        "sshfs",
        "fuse",
        "9p",
        "drvfs",
        "virtiofs",
        "vboxsf",
        "vmhgfs",
        "prl_fs",
        "afs",
        "coda",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ocfs2",
        "gfs2",
        "davfs",
    }
)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """Undo /proc/mounts' octal escapes (`\\040` space, `\\011` tab, `\\012`, `\\134`)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(mounts_text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) for each line of /proc/mounts, in file order."""
    entries = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            entries.append((_unescape(fields[1]), fields[2]))
    return entries


def _contains(mount_point: str, path: str) -> bool:
    """Whether `path` is `mount_point` or lies below it."""
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def _read_mounts() -> str:
    try:
        return PROC_MOUNTS.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return ""


def mount_fstype(path: Path, mounts_text: str | None = None) -> str:
    """The filesystem type `path` lives on ("ext4", "nfs4", ...), or "unknown".

    The longest matching mount point wins; of equal ones the last, which is mounted on top.
    `mounts_text` defaults to the contents of /proc/mounts.
    """
    text = _read_mounts() if mounts_text is None else mounts_text
    where = str(path.resolve())
    best, fstype = -1, "unknown"
    for mount_point, kind in parse_mounts(text):
        if _contains(mount_point, where) and len(mount_point) >= best:
            best, fstype = len(mount_point), kind
    return fstype


def network_submounts(root: Path, mounts_text: str | None = None) -> list[Path]:
    """Network filesystems mounted strictly below `root` (a CIFS share inside a local inbox)."""
    text = _read_mounts() if mounts_text is None else mounts_text
    where = str(root.resolve())
    return [
        Path(mount_point)
        for mount_point, kind in parse_mounts(text)
        if mount_point != where and _contains(where, mount_point) and is_network_fs(kind)
    ]


def is_network_fs(fstype: str) -> bool:
    """Whether changes on this filesystem type can happen where inotify cannot see them."""
    kind = fstype.lower()
    return kind in NETWORK_FS or kind.startswith("fuse.")


def inotify_limits(proc_dir: Path = INOTIFY_DIR) -> dict[str, int]:
    """The kernel's inotify limits (`max_user_watches`, `max_user_instances`,
    `max_queued_events`); a limit that cannot be read (not Linux) is left out."""
    limits = {}
    for name in ("max_user_watches", "max_user_instances", "max_queued_events"):
        try:
            limits[name] = int((proc_dir / name).read_text().strip())
        except (OSError, ValueError):
            continue
    return limits


def watch_margin(folder_count: int) -> int:
    """Watches left over for the user's other programs (editors, sync clients, desktop)."""
    return max(1024, folder_count // 10)


def suggested_watch_limit(folder_count: int) -> int:
    """A round `max_user_watches` with room to grow: twice the need, at least 524288."""
    need = 2 * (folder_count + watch_margin(folder_count))
    limit = 524288
    while limit < need:
        limit *= 2
    return limit


def check_watch_limit(folder_count: int, max_watches: int) -> str | None:
    """A message saying what to raise when `folder_count` folders (one inotify watch each,
    plus a margin) do not fit in `max_watches`; None when they fit or the limit is unknown (<= 0)."""
    if max_watches <= 0:
        return None
    margin = watch_margin(folder_count)
    if folder_count + margin <= max_watches:
        return None
    n = suggested_watch_limit(folder_count)
    return (
        f"inotify watch limit too low: the inbox has {folder_count} folders (one watch each, "
        f"plus {margin} for other programs) but fs.inotify.max_user_watches is {max_watches}; "
        f"folders beyond the limit are not watched and new images there are found only by the "
        f"periodic rescan. Raise it now with `sudo sysctl fs.inotify.max_user_watches={n}` and "
        f"keep it across reboots with the line `fs.inotify.max_user_watches={n}` in "
        f"{SYSCTL_FILE} (or set watch.mode: polling)"
    )
