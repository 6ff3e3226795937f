"""What the service has done since it started: counts, held folders, the last error, links
not followed.

Pure bookkeeping (no threads, no I/O): the worker records each result here, the main loop
turns the tally into the STATUS= line and the status file that `promptd status` reads.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from daemon import __version__
from daemon.records import Result
from daemon.service.llmtime import LLMTime
from daemon.service.state import HeldFolder, LastError, OllamaState, ServiceState

MAX_LINKS_REMEMBERED = 10_000  # past this, links are counted but no longer told apart


@dataclass
class Tally:
    """Counts per outcome, folders held by invalid rules, and the most recent failure."""

    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    outcomes: Counter[str] = field(default_factory=Counter)
    held: dict[str, str] = field(default_factory=dict)  # folder -> problem
    last_error: LastError | None = None
    links: set[str] = field(default_factory=set)  # symlinks seen and not followed
    more_links: int = 0  # seen once the set was full (may include repeats)
    llm: LLMTime = field(default_factory=LLMTime)  # Ollama's loads and token counts

    def note_symlink(self, path: Path) -> bool:
        """A symlink was found and not followed; True the first time this run (log it then)."""
        key = str(path)
        if key in self.links:
            return False
        if len(self.links) >= MAX_LINKS_REMEMBERED:
            self.more_links += 1
            return False
        self.links.add(key)
        return True

    @property
    def symlinks(self) -> int:
        """Links not followed, each counted once (about, past MAX_LINKS_REMEMBERED)."""
        return len(self.links) + self.more_links

    def record(self, result: Result, now: datetime | None = None) -> None:
        """Count one result; remember a held folder or the failure it reports."""
        self.outcomes[result.outcome] += 1
        self.llm = self.llm.plus(result.timings_ms)
        if result.outcome == "held":
            self.held[str(result.path.parent)] = result.reason or "invalid rule file"
        if result.outcome in ("error", "failed", "retry"):
            when = now or datetime.now(timezone.utc)
            self.last_error = LastError(str(result.path), result.reason or "", when)

    def release_held(self, folder: Path) -> None:
        """A rescan of ``folder`` re-evaluated what it holds: forget held entries at or below it."""
        for held in [h for h in self.held if Path(h).is_relative_to(folder)]:
            del self.held[held]

    @property
    def failed(self) -> int:
        """Images that ended without a usable prompt."""
        return self.outcomes["error"] + self.outcomes["failed"]

    def status_line(self, queue: int) -> str:
        """The STATUS= text `systemctl status` shows."""
        c = self.outcomes
        return (
            f"queue {queue}, done {c['ok']}, degraded {c['degraded']}, "
            f"failed {self.failed}, held folders {len(self.held)}"
        )

    def snapshot(
        self, *, queue: int, ollama: OllamaState, clip_device: str, api_url: str = ""
    ) -> ServiceState:
        """The status file's content now."""
        return ServiceState(
            pid=os.getpid(),
            started_at=self.started_at,
            updated_at=datetime.now(timezone.utc),
            queue=queue,
            done=self.outcomes["ok"],
            degraded=self.outcomes["degraded"],
            failed=self.failed,
            skipped=self.outcomes["skipped"],
            held_folders=tuple(HeldFolder(k, v) for k, v in self.held.items()),
            symlinks=self.symlinks,
            last_error=self.last_error,
            ollama=ollama,
            clip_device=clip_device,
            version=__version__,
            api_url=api_url,
            llm=self.llm,
        )
