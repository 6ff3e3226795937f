"""The ``api`` section of config.yaml: where the HTTP API listens and what it accepts.

Its own module because it carries the address checks (loopback or not) that the service,
``promptd doctor`` and the API's own Host guard share.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def split_listen(listen: str) -> tuple[str, int]:
    """(host, port) of ``api.listen``: ``127.0.0.1:8765``, ``[::1]:8765``, ``localhost:8765``."""
    text = listen.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{listen!r} is not HOST:PORT (e.g. 127.0.0.1:8765 or [::1]:8765)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{listen!r}: write an IPv6 address in brackets, e.g. [::1]:8765")
    number = int(port)
    if not 0 <= number < 65536:
        raise ValueError(f"{listen!r}: the port must be 1-65535 (0: any free port)")
    return host, number


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any 127.0.0.0/8 or ::1 address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiSettings(BaseModel):
    """The HTTP API and review page that `promptd run` serves (see README, "HTTP API")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="Serve the HTTP API and the review page")
    listen: str = Field(
        "127.0.0.1:8765",
        description="HOST:PORT to listen on (port 0: any free one); anything but loopback "
        "requires api.token",
    )
    token: str | None = Field(
        None,
        min_length=16,
        description="Bearer token every API request must send (Authorization: Bearer ...); "
        "required when listen is not a loopback address",
    )
    allowed_hosts: tuple[str, ...] = Field(
        (),
        description="Host names the API answers to besides localhost, 127.0.0.1, [::1] and the "
        "listen address (a guard against DNS rebinding); add the machine's name for a LAN bind",
    )
    max_pending: int = Field(
        32, ge=1, le=1000, description="Most uploads waiting or running at once; 429 beyond"
    )
    timeout_s: float = Field(
        300.0, gt=0, le=3600, description="Longest an upload may take before a 504 answer"
    )
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest image an upload may carry (413 beyond)"
    )
    save_to: Path | None = Field(
        None,
        description="Folder where uploaded images and their sidecars are kept; unset: nothing "
        "is written (relative to config.yaml)",
    )
    thumbnail_cache_mb: int = Field(
        64, ge=1, le=4096, description="Memory for the review page's cached thumbnails"
    )
    thumbnail_cache_items: int = Field(
        4000, ge=1, le=1_000_000, description="Most thumbnails kept in the cache"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen(value)
        return value.strip()

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiSettings:
        host = split_listen(self.listen)[0]
        if self.enabled and not is_loopback(host) and not self.token:
            raise ValueError(
                f"listen {self.listen!r} is reachable from other machines: set api.token "
                "(16+ characters, e.g. from `openssl rand -hex 24`) or listen on 127.0.0.1"
            )
        return self
