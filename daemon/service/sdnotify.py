"""Tell systemd how the service is doing (``sd_notify``), with the standard library only.

The protocol is one ``AF_UNIX``/``SOCK_DGRAM`` datagram of newline-separated ``KEY=VALUE``
lines sent to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside
systemd the variable is unset and every call is a no-op, so the daemon calls these
unconditionally. A failed send is logged once and never raised: the service keeps working
even when systemd cannot be told about it.

Use from the service (see ``sd_notify(3)``):

- ``extend_timeout(s)`` while models load, then ``ready()`` (the watchdog starts after it);
- ``status(text)`` with the queue and counts, ``watchdog()`` every ``watchdog_interval()``
  seconds from the main loop, and only while the observer and the worker are healthy;
- ``reloading()`` on SIGHUP, then ``ready()`` once the new config is in place;
- ``stopping()`` on the first SIGTERM.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Mapping
from typing import Any

import structlog

_FIELD_NAME = re.compile(r"^[A-Z0-9_]+$")


def _log() -> Any:
    """A fresh logger per use: failures are rare, and a cached one would ignore reconfiguration."""
    return structlog.get_logger(__name__)


def socket_address(value: str) -> str | None:
    """The ``connect()`` address for a ``$NOTIFY_SOCKET`` value; None when unusable.

    ``/run/systemd/notify`` is a path; ``@name`` is an abstract socket, spelled with a leading
    NUL for Python. Other forms (``vsock:``, relative paths) are not supported.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def format_message(fields: Mapping[str, object]) -> bytes:
    """The datagram for ``fields``: ``KEY=value`` lines, in the order given, UTF-8.

    Newlines inside a value are replaced by spaces so a value cannot forge another field.
    Raises ``ValueError`` for an empty mapping or a name that is not ``[A-Z0-9_]+``
    (a programming error, not a send failure).
    """
    if not fields:
        raise ValueError("sd_notify needs at least one field")
    lines = []
    for name, value in fields.items():
        if not _FIELD_NAME.match(name):
            raise ValueError(f"invalid sd_notify field name {name!r}: use [A-Z0-9_]+")
        text = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{name}={text}")
    return "\n".join(lines).encode("utf-8")


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``); None when off.

    The watchdog is off when ``$WATCHDOG_USEC`` is unset, not a positive integer, or when
    ``$WATCHDOG_PID`` is set and is not ``pid`` (default: this process), which means the
    variables were inherited from a parent and are not meant for us.
    """
    raw_usec = environ.get("WATCHDOG_USEC", "").strip()
    if not raw_usec.isdigit() or int(raw_usec) <= 0:
        return None
    raw_pid = environ.get("WATCHDOG_PID", "").strip()
    if raw_pid:
        own_pid = os.getpid() if pid is None else pid
        if not raw_pid.isdigit() or int(raw_pid) != own_pid:
            return None
    return int(raw_usec) / 2 / 1_000_000


class Notifier:
    """Sends sd_notify messages to one socket; does nothing when there is none."""

    def __init__(self, address: str | None) -> None:
        """``address`` as ``connect()`` takes it (see ``socket_address``), or None for no-op."""
        self.address = address
        self._failure_logged = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` in ``environ``; a no-op one when it is unset."""
        value = environ.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        address = socket_address(value)
        if address is None:
            _log().warning(
                "sd_notify_socket_unsupported",
                notify_socket=value,
                hint="only absolute paths and @abstract names are supported; not notifying",
            )
        return cls(address)

    @property
    def enabled(self) -> bool:
        """True when messages are actually sent somewhere."""
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send ``fields`` as one message; True when it was sent, False otherwise.

        Never raises on a send failure: the first one is logged as a warning, later ones are
        silent (systemd ignores what it does not understand, and we ignore its absence).
        """
        payload = format_message(fields)
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._failure_logged:
                self._failure_logged = True
                _log().warning(
                    "sd_notify_failed",
                    notify_socket=self.address.replace("\0", "@"),
                    error=str(exc),
                    hint="systemd will not see READY/WATCHDOG; further failures are not logged",
                )
            return False
        return True

    def ready(self) -> bool:
        """``READY=1``: startup (or a reload) is complete."""
        return self.send(READY=1)

    def status(self, text: str) -> bool:
        """``STATUS=``: one line shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is healthy; keeps ``WatchdogSec=`` from firing."""
        return self.send(WATCHDOG=1)

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send(STOPPING=1)

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (now on CLOCK_MONOTONIC unless given).

        Send ``ready()`` when the reload is done.
        """
        if monotonic_usec is None:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec)

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: the current start/stop step needs ``seconds`` more."""
        return self.send(EXTEND_TIMEOUT_USEC=max(0, round(seconds * 1_000_000)))
