"""Settings of `distributed:`: several machines draining one shared inbox through a broker.

Without ``broker`` promptd runs on one machine, as always, and never imports Celery. With it,
`promptd run` sends each pending image to the broker and `promptd worker` processes on each
GPU machine run the pipeline. An image travels as an inbox *name* and a path relative to that
inbox, so each machine maps the name to its own mount point of the share (``inboxes``).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

INBOX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BROKER_SCHEMES = ("redis://", "rediss://", "unix://")


class DistributedSettings(BaseModel):
    """Celery on Redis: the broker, this machine's mount points, and the delivery timings."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # as settings.Frozen

    broker: str | None = Field(
        None,
        description="redis://[:PASSWORD@]HOST:PORT/DB; unset: one machine, no broker, no Celery",
    )
    inboxes: dict[str, Path] = Field(
        default_factory=dict,
        description="Inbox name -> this machine's folder for it (the share's mount point); "
        "an `inbox` folder not listed here is named by its folder name",
    )
    queue: str = Field(
        "promptd",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Celery queue name, also the prefix of promptd's own Redis keys",
    )
    visibility_timeout_s: float = Field(
        3600.0,
        ge=10,
        le=7 * 86400,
        description="An unacknowledged image goes to another worker after this long; "
        "keep it above the slowest image (a worker that died is only noticed then)",
    )
    task_time_limit_s: float | None = Field(
        1800.0,
        ge=5,
        description="A worker process still busy with one image after this long is killed "
        "and replaced; must be below visibility_timeout_s; null: no limit (a slow image is "
        "then handed out again after the visibility timeout, and the lock turns it away)",
    )
    lock_timeout_s: float = Field(
        120.0,
        ge=2,
        le=3600,
        description="Per-image lock lifetime; the worker extends it every third of it while "
        "it works, so a dead worker's lock lapses after at most this long",
    )
    file_wait_s: float = Field(
        60.0,
        ge=0,
        le=600,
        description="How long a worker waits for an image it cannot see yet (NFS attribute "
        "caches hide new files from other machines for up to a minute); then it reports it "
        "and leaves it to the producer's next scan",
    )
    max_queued: int = Field(
        10000,
        ge=1,
        description="Most images waiting in the broker at once; scans wait for room",
    )
    queued_ttl_s: float = Field(
        86400.0,
        ge=60,
        description="An image marked as queued is sent again by a later scan after this "
        "long even if no worker reported back (a safety net for lost messages)",
    )
    heartbeat_s: float = Field(
        10.0, ge=0.5, le=300, description="How often workers report themselves for status"
    )
    soft_shutdown_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On a second SIGTERM, how long a worker may still finish its image",
    )
    restore_interval_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="How often workers look for messages past the visibility timeout",
    )

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(BROKER_SCHEMES):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("inboxes")
    @classmethod
    def _inbox_names(cls, value: dict[str, Path]) -> dict[str, Path]:
        bad = [name for name in value if not INBOX_NAME.match(name)]
        if bad:
            raise ValueError(
                f"inbox names must be 1-64 letters, digits, '.', '_' or '-': {bad[0]!r}"
            )
        return value

    @field_validator("task_time_limit_s")
    @classmethod
    def _time_limit_below_visibility(
        cls, value: float | None, info: ValidationInfo
    ) -> float | None:
        visibility = info.data.get("visibility_timeout_s")
        if value is not None and visibility is not None and value >= visibility:
            raise ValueError(
                f"must be below visibility_timeout_s ({visibility:g}), or a slow image is "
                "handed to a second worker while the first still works on it"
            )
        return value
