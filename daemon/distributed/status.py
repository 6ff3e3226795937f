"""What `promptd status` shows about the broker and the workers (the producer writes it).

The producer keeps ``<state_dir>/distributed.json`` current beside the service's status file:
the broker as it sees it (reachable, since when, the last error), the images waiting in the
broker and in hand, and every worker whose heartbeat has not lapsed, with its counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from daemon.fs.atomic import write_atomic

STATUS_FILE_NAME = "distributed.json"
SCHEMA = "promptd.distributed/1"
COUNTED = ("ok", "degraded", "error", "failed", "skipped", "retry")


@dataclass(frozen=True)
class BrokerStatus:
    """The broker and its queue as the producer last saw them."""

    url: str  # password masked
    reachable: bool | None = None
    since: str = ""
    error: str = ""
    queued: int = 0
    in_hand: int = 0
    reconnects: int = 0
    updated_at: str = ""
    workers: tuple[dict[str, str], ...] = field(default_factory=tuple)


def status_path(state_dir: Path) -> Path:
    """Where the distributed status lives."""
    return state_dir / STATUS_FILE_NAME


def write_status(path: Path, status: BrokerStatus) -> None:
    """Replace the status file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, **asdict(status)}
    write_atomic(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode())


def read_status(path: Path) -> BrokerStatus | None:
    """The status in ``path``; None when missing or unreadable (the producer rewrites it)."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        return None
    try:
        return BrokerStatus(
            url=str(doc["url"]),
            reachable=doc.get("reachable"),
            since=str(doc.get("since", "")),
            error=str(doc.get("error", "")),
            queued=int(doc.get("queued", 0)),
            in_hand=int(doc.get("in_hand", 0)),
            reconnects=int(doc.get("reconnects", 0)),
            updated_at=str(doc.get("updated_at", "")),
            workers=tuple(_worker(w) for w in doc.get("workers", ()) if isinstance(w, dict)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _worker(raw: dict[str, Any]) -> dict[str, str]:
    return {str(k)[:64]: str(v)[:300] for k, v in raw.items()}


def format_distributed(status: BrokerStatus | None) -> str:
    """The lines `promptd status` prints under the service's own."""
    if status is None:
        return "  broker:       no report yet (the producer writes one every second)\n"
    if status.reachable is None:
        state = "not contacted yet"
    elif status.reachable:
        state = f"reachable since {status.since}"
    else:
        state = f"UNREACHABLE since {status.since} ({status.error}); reconnecting with backoff"
    lines = [
        f"  broker:       {status.url}: {state}",
        f"  distributed:  {status.queued} queued in the broker, {status.in_hand} in hand, "
        f"{status.reconnects} reconnect(s); as of {status.updated_at}",
        f"  workers:      {len(status.workers)} seen recently",
    ]
    for worker in status.workers:
        counts = ", ".join(f"{k} {worker.get(k, '0')}" for k in COUNTED)
        current = worker.get("current") or "idle"
        lines.append(
            f"    {worker.get('name', '?')} (pid {worker.get('pid', '?')}, "
            f"clip {worker.get('clip_device', '?')}, ollama {worker.get('ollama', 'unknown')}, "
            f"seen {worker.get('seen_at', '?')}): {counts}; now: {current}"
        )
    return "\n".join(lines) + "\n"
