"""sd_notify over a real AF_UNIX datagram socket, as systemd listens for it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.service.sdnotify import Notifier, format_message, socket_address, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in tmp_path and the $NOTIFY_SOCKET value that reaches it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, str(path)


def received(sock: socket.socket, count: int) -> list[bytes]:
    """The next ``count`` datagrams on ``sock``."""
    return [sock.recv(4096) for _ in range(count)]


def test_notifier_with_socket_sends_lifecycle_messages_in_order(
    listener: tuple[socket.socket, str],
) -> None:
    """READY, STATUS, WATCHDOG and STOPPING arrive as separate datagrams, in call order."""
    sock, address = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})

    assert notifier.ready()
    assert notifier.status("queue 3, done 12")
    assert notifier.watchdog()
    assert notifier.stopping()

    assert received(sock, 4) == [
        b"READY=1",
        b"STATUS=queue 3, done 12",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]


def test_notifier_with_abstract_address_reaches_abstract_socket() -> None:
    """A $NOTIFY_SOCKET starting with @ names a socket in the abstract namespace."""
    name = f"promptd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})

        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"


def test_notifier_without_notify_socket_does_nothing() -> None:
    """Outside systemd every call is a no-op that returns False and raises nothing."""
    notifier = Notifier.from_environ({})

    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.extend_timeout(10) is False


def test_notifier_with_unsupported_address_is_disabled_with_warning() -> None:
    """A vsock: or relative $NOTIFY_SOCKET disables notifications and says why."""
    with capture_logs() as logs:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})

    assert not notifier.enabled
    assert [entry["event"] for entry in logs] == ["sd_notify_socket_unsupported"]


def test_notifier_with_vanished_socket_returns_false_and_logs_once(tmp_path: Path) -> None:
    """Sending to a socket that is gone never raises; the failure is logged only once."""
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})

    with capture_logs() as logs:
        results = [notifier.ready(), notifier.watchdog(), notifier.stopping()]

    assert results == [False, False, False]
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]


def test_notifier_status_with_newlines_sends_one_line(
    listener: tuple[socket.socket, str],
) -> None:
    """A multi-line status is flattened so it cannot inject another field."""
    sock, address = listener
    Notifier.from_environ({"NOTIFY_SOCKET": address}).status("queue 3\nREADY=1")

    assert sock.recv(4096) == b"STATUS=queue 3 READY=1"


def test_notifier_reloading_sends_reloading_with_current_monotonic_time(
    listener: tuple[socket.socket, str],
) -> None:
    """RELOADING=1 carries MONOTONIC_USEC read from CLOCK_MONOTONIC at the call."""
    sock, address = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier.from_environ({"NOTIFY_SOCKET": address}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    first, second = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    name, value = second.split("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_notifier_extend_timeout_sends_microseconds(
    listener: tuple[socket.socket, str],
) -> None:
    """extend_timeout(seconds) asks systemd for that much more time, in microseconds."""
    sock, address = listener
    Notifier.from_environ({"NOTIFY_SOCKET": address}).extend_timeout(90.5)

    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=90500000"


def test_notifier_send_with_several_fields_sends_one_datagram(
    listener: tuple[socket.socket, str],
) -> None:
    """send() puts all its fields in one message, one KEY=value line each, in order."""
    sock, address = listener
    Notifier.from_environ({"NOTIFY_SOCKET": address}).send(STATUS="failed", ERRNO=28)

    assert sock.recv(4096) == b"STATUS=failed\nERRNO=28"


def test_format_message_with_bad_field_name_raises_value_error() -> None:
    """A lower-case or '='-containing field name is a programming error, not a send failure."""
    with pytest.raises(ValueError, match="invalid sd_notify field name"):
        format_message({"ready": 1})
    with pytest.raises(ValueError, match="at least one field"):
        format_message({})


def test_socket_address_maps_path_abstract_and_unsupported_forms() -> None:
    """Paths pass through, @name becomes a NUL-prefixed name, other forms are refused."""
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@sd-notify") == "\0sd-notify"
    assert socket_address("@") is None
    assert socket_address("relative/sock") is None


def test_watchdog_interval_without_watchdog_usec_is_none() -> None:
    """No $WATCHDOG_USEC means the watchdog is off."""
    assert watchdog_interval({}) is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """Pings go out at half the configured WatchdogSec, as sd_watchdog_enabled(3) advises."""
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0


def test_watchdog_interval_with_own_pid_is_enabled() -> None:
    """$WATCHDOG_PID naming this process keeps the watchdog on."""
    environ = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}

    assert watchdog_interval(environ) == 5.0


def test_watchdog_interval_with_other_pid_is_none() -> None:
    """$WATCHDOG_PID naming another process means the variables were inherited: off."""
    environ = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}

    assert watchdog_interval(environ, pid=1234) is None
    assert watchdog_interval(environ, pid=4242) == 5.0


@pytest.mark.parametrize("usec", ["", "0", "-5", "abc", "1.5"])
def test_watchdog_interval_with_invalid_usec_is_none(usec: str) -> None:
    """A zero, negative or non-integer $WATCHDOG_USEC leaves the watchdog off."""
    assert watchdog_interval({"WATCHDOG_USEC": usec}) is None
