"""Driving `promptd run` as a real subprocess in tests and benchmarks.

`Daemon` starts ``python -m daemon.cli run --config F`` with its JSON log in a file and its
sd_notify messages going to a `NotifyListener` (a datagram socket standing in for systemd);
`wait_until` polls with a deadline instead of sleeping; `png_bytes` makes small, distinct
images quickly; the remaining helpers read what the daemon left on disk.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from daemon.config import ImageLimits
from daemon.fs.atomic import is_temp_name
from daemon.sidecar import read_sidecar, sidecar_names
from tests.images import scene

_T = TypeVar("_T")
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; keep a margin


def wait_until(
    predicate: Callable[[], _T], timeout: float, what: str, interval: float = 0.05
) -> _T:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def png_bytes(index: int, size: tuple[int, int] = (48, 32)) -> bytes:
    """A small PNG whose pixels differ with ``index``, encoded in memory."""
    buffer = io.BytesIO()
    image = scene(size, hue_shift=index % 50)
    image.putpixel((index % size[0], (index // size[0]) % size[1]), (index % 256, 7, 99))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder: Path, count: int, prefix: str = "img") -> list[Path]:
    """Write ``count`` distinct small PNGs into ``folder`` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{prefix}{index:04d}.png"
        path.write_bytes(png_bytes(index))
        paths.append(path)
    return paths


class NotifyListener:
    """A bound AF_UNIX datagram socket collecting sd_notify messages in a background thread."""

    def __init__(self, folder: Path) -> None:
        path = folder / "notify.sock"
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            self.env_value, address = str(path), str(path)
        else:  # a deep tmp_path: use the abstract namespace, which sd_notify also allows
            name = f"promptd-test-{uuid.uuid4().hex}"
            self.env_value, address = "@" + name, "\0" + name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(address)
        self._sock.settimeout(0.1)
        self._lock = threading.Lock()
        self._messages: list[dict[str, str]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self._messages.append(fields)

    @property
    def messages(self) -> list[dict[str, str]]:
        """Every message received so far, oldest first (each a dict of its fields)."""
        with self._lock:
            return list(self._messages)

    def kinds(self) -> list[str]:
        """The first field name of each message, in order (READY, STATUS, WATCHDOG, ...)."""
        return [next(iter(m)) for m in self.messages if m]

    def close(self) -> None:
        """Stop listening and close the socket."""
        self._closed.set()
        self._thread.join(2)
        self._sock.close()


class Daemon:
    """One `promptd run` subprocess with its JSON log in ``log_path``.

    ``command`` runs another subcommand (``("worker",)``); ``own_group`` starts it in its own
    session and process group, so ``kill_group`` reaches its children too.
    """

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *,
        notify: NotifyListener | None = None,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = ("run",),
        own_group: bool = False,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.notify = notify
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "NOTIFY_"))
        }
        environ.pop("PROMPTD_CONFIG", None)
        environ.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        if notify is not None:
            environ["NOTIFY_SOCKET"] = notify.env_value
        environ.update(env or {})
        self._own_group = own_group
        self._log = log_path.open("ab")
        self._log_offset = 0
        self._log_lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", *command, "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=environ,
            cwd=config.parent,
            start_new_session=own_group,
        )

    @property
    def pid(self) -> int:
        """The subprocess's pid."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the subprocess runs."""
        return self.proc.poll() is None

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines are skipped)."""
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self._log_offset += end
        for raw in data[:end].splitlines():
            if raw.startswith(b"{"):
                try:
                    self._log_lines.append(json.loads(raw))
                except ValueError:
                    continue
        return list(self._log_lines)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log lines whose event is ``name``."""
        return [line for line in self.lines() if line.get("event") == name]

    def results_per_path(self) -> Counter[str]:
        """How many "image" result lines (any outcome but skipped) each path got."""
        return Counter(line["path"] for line in self.events("image"))

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait for the service_ready log line (READY=1 is sent just before it)."""
        wait_until(
            lambda: self.events("service_ready") or self._check_alive(),
            timeout,
            "promptd run to become ready",
        )

    def _check_alive(self) -> bool:
        if not self.alive():
            raise AssertionError(f"promptd run exited with {self.proc.returncode}:\n{self.tail()}")
        return False

    def tail(self, chars: int = 4000) -> str:
        """The end of the log, for failure messages."""
        return self.log_path.read_text("utf-8", errors="replace")[-chars:]

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the subprocess."""
        self.proc.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL the whole process group (needs ``own_group``): a machine losing power."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the subprocess to exit; its return code (fails after ``timeout``)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"promptd run still running after {timeout} s") from exc

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; safe to call more than once."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._own_group:  # a child the group leader left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def _listing(folder: Path) -> list[str]:
    """The names in ``folder`` ([] when it does not exist)."""
    try:
        with os.scandir(folder) as entries:
            return [entry.name for entry in entries]
    except FileNotFoundError:
        return []


def _pair(image: Path, listing: list[str] | None = None) -> tuple[Path, Path]:
    """The .txt and .json of ``image`` under stem naming (filename form on a stem clash)."""
    names = _listing(image.parent) if listing is None else listing
    txt, js = sidecar_names(image.name, "stem", names, ImageLimits().extensions)
    return image.parent / txt, image.parent / js


def json_path(image: Path) -> Path:
    """Where the .json of ``image`` is."""
    return _pair(image)[1]


def txt_path(image: Path) -> Path:
    """Where the .txt of ``image`` is."""
    return _pair(image)[0]


def sidecar_doc(image: Path) -> dict[str, Any] | None:
    """The promptd .json of ``image``, or None when there is none (yet)."""
    return read_sidecar(json_path(image))


def _statuses(images: Iterable[Path]) -> Iterator[tuple[Path, str | None]]:
    """Each image's sidecar status (None: no sidecar yet), listing each folder once."""
    listings: dict[Path, list[str]] = {}
    for image in images:
        if image.parent not in listings:
            listings[image.parent] = _listing(image.parent)
        doc = read_sidecar(_pair(image, listings[image.parent])[1])
        yield image, None if doc is None else doc.get("status")


def statuses(images: Iterable[Path]) -> dict[Path, str | None]:
    """Each image's sidecar status (None: no sidecar yet)."""
    return dict(_statuses(images))


def count_done(images: Iterable[Path]) -> int:
    """How many of the images have a sidecar (any status)."""
    return sum(status is not None for _, status in _statuses(images))


def all_have_status(images: Iterable[Path], status: str) -> bool:
    """True when every image has a sidecar with ``status`` (stops at the first that has not)."""
    return all(value == status for _, value in _statuses(images))


def temp_files(root: Path) -> list[Path]:
    """promptd temp files anywhere under ``root``."""
    return [
        Path(folder, name)
        for folder, _, files in os.walk(root)
        for name in files
        if is_temp_name(name)
    ]
