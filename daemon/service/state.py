"""The status file that ``promptd run`` keeps current and ``promptd status`` reads.

The service rewrites ``<state_dir>/status.json`` atomically whenever its counts change and at
least every ``STALE_AFTER / 4`` (a good moment is each watchdog ping), so a reader always sees
a whole document and can tell a live service from a crashed one: by the pid, and by the age
of ``updated_at``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from daemon.clean import visible
from daemon.config import Config, cache_dir
from daemon.errors import PromptdError, TransientError
from daemon.fs.atomic import write_atomic
from daemon.service.llmtime import LLMTime

STATE_FILE_NAME = "status.json"
STATE_SCHEMA = "promptd.state/1"
STALE_AFTER = timedelta(minutes=2)
_SHOWN_IN_PROGRESS = 5

OllamaState = Literal["up", "down", "unknown"]
Writer = Callable[[Path, bytes], None]


@dataclass(frozen=True)
class HeldFolder:
    """A folder whose images wait because its rule file is invalid."""

    path: str
    problem: str


@dataclass(frozen=True)
class LastError:
    """The most recent image that ended in an error."""

    path: str
    message: str
    at: datetime


@dataclass(frozen=True)
class ServiceState:
    """What the running service is doing; times are timezone-aware (stored to the second)."""

    pid: int
    started_at: datetime
    updated_at: datetime
    queue: int = 0
    in_progress: tuple[str, ...] = ()
    done: int = 0
    degraded: int = 0
    failed: int = 0
    skipped: int = 0
    held_folders: tuple[HeldFolder, ...] = ()
    symlinks: int = 0  # links found in the inboxes and not followed
    last_error: LastError | None = None
    ollama: OllamaState = "unknown"
    clip_device: str = "unknown"
    version: str = ""
    api_url: str = ""  # where the HTTP API listens; empty when it is off
    llm: LLMTime = field(default_factory=LLMTime)  # model loads and tokens/s since start


def state_path(state_dir: Path) -> Path:
    """Where the status file lives inside ``state_dir``."""
    return state_dir / STATE_FILE_NAME


def service_state_path(config: Config) -> Path:
    """The status file of the service that runs with ``config`` (state_dir, else cache_dir)."""
    folder = config.state_dir or cache_dir(config)
    return state_path(folder)


def state_to_json(state: ServiceState) -> bytes:
    """The status file's bytes: a JSON object with ISO 8601 UTC times."""
    doc = asdict(state)
    doc["started_at"] = _iso(state.started_at)
    doc["updated_at"] = _iso(state.updated_at)
    if state.last_error is not None:
        doc["last_error"]["at"] = _iso(state.last_error.at)
    return (
        # ASCII: a name that is not UTF-8 (a lone surrogate in Python) is kept as an escape.
        json.dumps({"schema": STATE_SCHEMA, **doc}, indent=2, ensure_ascii=True) + "\n"
    ).encode()


def state_from_json(data: bytes, path: Path) -> ServiceState:
    """Parse a status file; raises ``PromptdError`` naming ``path`` if it is not one."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
            raise ValueError(f"not a {STATE_SCHEMA} document")
        last = doc.get("last_error")
        return ServiceState(
            pid=int(doc["pid"]),
            started_at=_parse_time(doc["started_at"]),
            updated_at=_parse_time(doc["updated_at"]),
            queue=int(doc.get("queue", 0)),
            in_progress=tuple(str(p) for p in doc.get("in_progress", ())),
            done=int(doc.get("done", 0)),
            degraded=int(doc.get("degraded", 0)),
            failed=int(doc.get("failed", 0)),
            skipped=int(doc.get("skipped", 0)),
            held_folders=tuple(
                HeldFolder(str(h["path"]), str(h["problem"])) for h in doc.get("held_folders", ())
            ),
            symlinks=int(doc.get("symlinks", 0)),
            last_error=None
            if last is None
            else LastError(str(last["path"]), str(last["message"]), _parse_time(last["at"])),
            ollama=_ollama_state(doc.get("ollama")),
            clip_device=str(doc.get("clip_device", "unknown")),
            version=str(doc.get("version", "")),
            api_url=str(doc.get("api_url", "")),
            llm=LLMTime.from_json(doc.get("llm")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise PromptdError(
            f"not a readable promptd status file ({reason}); it is rewritten by the running "
            "service; if none is running, delete it",
            path,
        ) from exc


def write_state(path: Path, state: ServiceState, writer: Writer = write_atomic) -> None:
    """Replace the status file atomically (``writer`` defaults to ``atomic.write_atomic``).

    Creates the folder if needed. Raises ``TransientError`` when the write fails.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransientError(
            f"cannot create the state folder ({exc.strerror}); make it writable for the "
            "promptd user (StateDirectory= does this under systemd)",
            path.parent,
        ) from exc
    writer(path, state_to_json(state))


def read_state(path: Path) -> ServiceState | None:
    """The status in ``path``; None when there is no file (the service never ran here)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PromptdError(f"cannot read the status file ({exc.strerror})", path) from exc
    return state_from_json(data, path)


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (possibly owned by another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_duration(seconds: float) -> str:
    """A short human duration: ``45s``, ``12m 05s``, ``3h 07m``, ``2d 04h``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_status(
    state: ServiceState | None,
    *,
    now: datetime,
    alive: bool,
    stale_after: timedelta = STALE_AFTER,
) -> str:
    """The report ``promptd status`` prints; ``alive`` is ``pid_alive(state.pid)``."""
    if state is None:
        return (
            "promptd is not running (no status file: it has not run with this state_dir).\n"
            "Start it with `systemctl start promptd` or `promptd run`."
        )
    age = (now - state.updated_at).total_seconds()
    if not alive:
        head = [
            f"promptd is not running: pid {state.pid} has exited "
            f"(last update {format_duration(age)} ago).",
            "If it did not stop on purpose, see `journalctl -u promptd`. Last known state:",
        ]
    else:
        uptime = format_duration((now - state.started_at).total_seconds())
        head = [f"promptd is running (pid {state.pid}), up {uptime}."]
        if age > stale_after.total_seconds():
            head.append(
                f"Warning: the status has not been updated for {format_duration(age)}; "
                "the service may be stuck (or the pid now belongs to another program)."
            )
    return "\n".join(visible(line) for line in head + _details(state)) + "\n"


def _details(state: ServiceState) -> list[str]:
    """The indented lines shared by the running and not-running reports."""
    lines = [
        f"  queue:        {state.queue} waiting, {len(state.in_progress)} in progress",
        *(f"                {p}" for p in state.in_progress[:_SHOWN_IN_PROGRESS]),
    ]
    if len(state.in_progress) > _SHOWN_IN_PROGRESS:
        lines.append(f"                ... and {len(state.in_progress) - _SHOWN_IN_PROGRESS} more")
    lines += [
        f"  done:         {state.done}   degraded: {state.degraded}   "
        f"failed: {state.failed}   skipped: {state.skipped}",
        f"  ollama:       {state.ollama}",
        f"  llm:          {state.llm.describe()}",
        f"  clip device:  {state.clip_device}",
        f"  started:      {_iso(state.started_at)}   version: {state.version or 'unknown'}",
        f"  http api:     {state.api_url or 'off'}",
    ]
    if state.held_folders:
        lines.append(f"  held folders ({len(state.held_folders)}; fix the rule file to release):")
        lines += [f"    {h.path}: {h.problem}" for h in state.held_folders]
    else:
        lines.append("  held folders: none")
    if state.symlinks:
        lines.append(
            f"  symlinks:     {state.symlinks} not followed (promptd never follows links; "
            "copy the images into the inbox; each is named once in the log)"
        )
    if state.last_error is None:
        lines.append("  last error:   none")
    else:
        err = state.last_error
        lines.append(f"  last error:   {_iso(err.at)} {err.path}: {err.message}")
    return lines


def _ollama_state(value: object) -> OllamaState:
    """``up``/``down`` as written; anything else (a newer writer, a typo) is ``unknown``."""
    if value == "up":
        return "up"
    if value == "down":
        return "down"
    return "unknown"


def _iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, to the second."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    """Parse ``_iso`` output (and any ISO 8601 with an offset) on Python 3.10 too."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time without a timezone: {text!r}")
    return moment
