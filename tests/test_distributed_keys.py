"""Image keys on the wire, inbox names and mount points, and the Celery settings (no broker)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from daemon.config import load_config
from daemon.config.settings import Config
from daemon.errors import ConfigError

pytest.importorskip("celery", reason="the distributed extra is not installed")

from daemon.distributed.app import SERIALIZER, _decode, celery_settings, masked_url
from daemon.distributed.inboxes import (
    absence_reason,
    inbox_map,
    key_for,
    local_path,
    wait_visible,
)
from daemon.distributed.keys import (
    MAX_MESSAGE_BYTES,
    BadKey,
    ImageKey,
    key_from_message,
)
from daemon.distributed.status import (
    BrokerStatus,
    format_distributed,
    read_status,
    write_status,
)

GOOD = {"inbox": "inbox", "path": "a/b.png", "size": 10, "mtime_ns": 5}


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_key_from_message_with_good_payload_round_trips() -> None:
    """A well-formed payload gives the key it came from, and back."""
    key = key_from_message(dict(GOOD))

    assert key == ImageKey("inbox", "a/b.png", 10, 5)
    assert key.to_message() == GOOD
    assert key.name == "inbox/a/b.png"
    assert len(key.digest) == 32


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"path": "../etc/passwd"}, "'..' part"),
        ({"path": "a/../../b.png"}, "'..' part"),
        ({"path": "/etc/passwd"}, "absolute"),
        ({"path": "a\0b.png"}, "NUL"),
        ({"path": "a//b.png"}, "empty"),
        ({"path": "./b.png"}, "'.'"),
        ({"path": ""}, "empty path"),
        ({"path": "x" * 5000}, "longer than"),
        ({"path": "bad\ud800.png"}, "surrogates"),
        ({"path": 7}, "must be a string"),
        ({"inbox": "../inbox"}, "invalid inbox name"),
        ({"inbox": ""}, "invalid inbox name"),
        ({"size": -1}, "size must be"),
        ({"size": True}, "size must be"),
        ({"mtime_ns": "5"}, "mtime_ns must be"),
        ({"mtime_ns": 2**70}, "mtime_ns must be"),
        ({"extra": 1}, "exactly the fields"),
    ],
)
def test_key_from_message_with_hostile_field_is_refused(change: dict[str, Any], words: str) -> None:
    """Paths that climb out, NULs, bad names and wrong types are refused with the reason."""
    with pytest.raises(BadKey, match=words):
        key_from_message({**GOOD, **change})


@pytest.mark.parametrize("payload", [None, [], "inbox/a.png", {"inbox": "inbox"}])
def test_key_from_message_with_wrong_shape_is_refused(payload: Any) -> None:
    """Anything but an object with exactly the four fields is refused."""
    with pytest.raises(BadKey):
        key_from_message(payload)


def test_key_with_non_utf8_name_survives_the_wire() -> None:
    """A file name that is not UTF-8 (surrogate escapes) travels and maps back to the bytes."""
    name = os.fsdecode(b"caf\xe9.png")
    key = key_from_message({**GOOD, "path": name})

    assert os.fsencode(key.path) == b"caf\xe9.png"


def test_serializer_with_oversized_body_refuses_it_before_parsing() -> None:
    """A message body over the cap is refused unread; a normal one decodes."""
    assert _decode('[[], {"image": 1}, {}]') == [[], {"image": 1}, {}]
    with pytest.raises(ValueError, match="refused"):
        _decode("[" + " " * MAX_MESSAGE_BYTES + "]")


def test_inbox_map_names_inboxes_by_folder_and_explicit_names(tmp_path: Path) -> None:
    """`inbox` folders are named by their folder name; distributed.inboxes adds or renames."""
    config = load_config(
        write_config(
            tmp_path,
            """
            inbox: [./photos, ./art]
            distributed:
              broker: redis://127.0.0.1:6379/0
              inboxes: {share: ./art, extra: /mnt/nas/extra}
            """,
        )
    )

    assert inbox_map(config) == {
        "share": tmp_path / "art",
        "extra": Path("/mnt/nas/extra"),
        "photos": tmp_path / "photos",
    }


def test_inbox_map_with_two_inboxes_of_one_name_is_a_config_error(tmp_path: Path) -> None:
    """Two inbox folders with the same folder name must be told apart by the user."""
    config = load_config(
        write_config(
            tmp_path,
            """
            inbox: [./a/inbox, ./b/inbox]
            distributed: {broker: "redis://127.0.0.1:6379/0"}
            """,
        )
    )

    with pytest.raises(ConfigError, match="both named 'inbox'"):
        inbox_map(config)


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ("{broker: 'http://127.0.0.1:6379'}", "redis://"),
        ("{broker: 'redis://h/0', inboxes: {'../x': /tmp}}", "inbox names"),
        ("{broker: 'redis://h/0', visibility_timeout_s: 60, task_time_limit_s: 60}", "below"),
        ("{broker: 'redis://h/0', queue: 'a b'}", "queue"),
    ],
)
def test_distributed_section_with_bad_value_names_it(
    tmp_path: Path, section: str, words: str
) -> None:
    """check-config reports a bad broker URL, inbox name, timing or queue under its path."""
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, f"distributed: {section}\n"))

    assert any("distributed." in p and words in p for p in info.value.problems), info.value.problems


def test_config_without_distributed_section_has_no_broker() -> None:
    """Existing configs stay valid and mean one machine."""
    assert Config().distributed.broker is None


def test_key_for_names_the_path_relative_to_its_inbox(tmp_path: Path) -> None:
    """The producer's key: the inbox's name and the "/"-joined path below it."""
    image = tmp_path / "inbox" / "sub" / "x.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    st = image.stat()

    key = key_for(image, st, {tmp_path / "inbox": "inbox"})

    assert key == ImageKey("inbox", "sub/x.png", 1, st.st_mtime_ns)
    assert key_for(tmp_path / "elsewhere.png", st, {tmp_path / "inbox": "inbox"}) is None


def test_local_path_maps_the_name_to_this_machines_folder(tmp_path: Path) -> None:
    """The same key lands under whatever folder this machine mounted the share on."""
    path, why = local_path(ImageKey("inbox", "sub/x.png", 1, 1), {"inbox": tmp_path})

    assert (path, why) == (tmp_path / "sub" / "x.png", "")


def test_local_path_through_symlinked_folder_out_of_the_inbox_is_refused(tmp_path: Path) -> None:
    """A folder inside the inbox that links elsewhere cannot be used to reach outside it."""
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (inbox / "link").symlink_to(outside)

    path, why = local_path(ImageKey("inbox", "link/x.png", 1, 1), {"inbox": inbox})

    assert path is None
    assert "outside the inbox" in why


def test_local_path_with_unmapped_inbox_says_which_are_known(tmp_path: Path) -> None:
    """An inbox this machine does not map is refused, naming the ones it does."""
    path, why = local_path(ImageKey("other", "x.png", 1, 1), {"inbox": tmp_path})

    assert path is None
    assert "'other' is not mapped" in why and "inbox" in why


def test_wait_visible_with_missing_file_gives_up_after_the_wait(tmp_path: Path) -> None:
    """A file this machine never sees: None once the (short) wait is over."""
    assert wait_visible(tmp_path / "x.png", ImageKey("inbox", "x.png", 1, 1), 0.3) is None


def test_wait_visible_with_older_attributes_than_the_producer_saw_waits(tmp_path: Path) -> None:
    """A stale view (an mtime older than the producer's) is not taken as the file."""
    image = tmp_path / "x.png"
    image.write_bytes(b"x")
    st = image.stat()

    assert wait_visible(image, ImageKey("inbox", "x.png", 1, st.st_mtime_ns + 10**9), 0.3) is None
    assert wait_visible(image, ImageKey("inbox", "x.png", 1, st.st_mtime_ns), 0.3) is not None


def test_absence_reason_tells_an_unmounted_share_from_a_missing_file(tmp_path: Path) -> None:
    """An empty or missing inbox folder suggests the mount; otherwise the file moved."""
    assert "mounted" in absence_reason(tmp_path / "x.png", tmp_path)
    assert "mounted" in absence_reason(tmp_path / "none" / "x.png", tmp_path / "none")
    (tmp_path / "other.png").write_bytes(b"x")
    assert "moved or deleted" in absence_reason(tmp_path / "x.png", tmp_path)


def test_celery_settings_follow_the_reference() -> None:
    """Late ack, reject on lost worker, prefetch 1, one process, no backend, timeouts set."""
    config = Config.model_validate(
        {
            "distributed": {
                "broker": "redis://127.0.0.1:1/0",
                "visibility_timeout_s": 900,
                "task_time_limit_s": 600,
            }
        }
    )
    conf = celery_settings(config.distributed)

    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_concurrency"] == 1
    assert conf["result_backend"] is None and conf["task_ignore_result"]
    assert conf["broker_connection_retry_on_startup"] is True
    assert conf["broker_connection_max_retries"] is None
    assert conf["broker_transport_options"]["visibility_timeout"] == 900
    assert conf["result_backend_transport_options"]["visibility_timeout"] == 900
    assert conf["visibility_timeout"] == 900
    assert conf["task_time_limit"] == 600 < conf["visibility_timeout"]
    assert conf["worker_soft_shutdown_timeout"] == 30
    assert conf["accept_content"] == [SERIALIZER] and conf["task_serializer"] == SERIALIZER


def test_masked_url_hides_the_password() -> None:
    """Logs and status never show the broker's password."""
    assert masked_url("redis://:s3cret@nas.lan:6379/0") == "redis://:***@nas.lan:6379/0"
    assert masked_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_status_file_round_trips_and_formats_workers(tmp_path: Path) -> None:
    """What the producer writes, `promptd status` reads and prints with each worker's counts."""
    path = tmp_path / "distributed.json"
    workers = ({"name": "gpu1", "pid": "7", "ok": "12", "ollama": "up", "current": "inbox/a.png"},)
    write_status(
        path, BrokerStatus("redis://h/0", True, "T0", queued=3, in_hand=1, workers=workers)
    )

    text = format_distributed(read_status(path))

    assert "redis://h/0: reachable since T0" in text
    assert "3 queued in the broker, 1 in hand" in text
    assert "1 seen recently" in text and "gpu1 (pid 7" in text and "ok 12" in text
    assert "now: inbox/a.png" in text


@pytest.mark.parametrize(
    "content", [b"", b"{", b"[]", b'{"schema": "other"}', b'{"schema": "promptd.distributed/1"}']
)
def test_status_file_that_is_not_ours_reads_as_no_report(tmp_path: Path, content: bytes) -> None:
    """A truncated or foreign file is no report, never a crash of `promptd status`."""
    path = tmp_path / "distributed.json"
    path.write_bytes(content)

    assert read_status(path) is None
    assert "no report yet" in format_distributed(None)


def test_one_machine_start_up_never_imports_celery(tmp_path: Path) -> None:
    """Without a broker, the CLI and a Service being built import no Celery, kombu or redis."""
    config = write_config(tmp_path, "inbox: ./inbox\nclip: {offline: true}\n")
    code = textwrap.dedent(
        f"""
        import sys
        import daemon.cli
        from pathlib import Path
        from daemon.config import load_config
        from daemon.service.daemon import Service
        path = Path({str(config)!r})
        Service(load_config(path), path, {{}})
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("celery", "kombu", "redis", "billiard")
                       or m.startswith("daemon.distributed"))
        print(heavy)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
