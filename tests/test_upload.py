"""The pipeline's upload stages on their own: sniffing, names, the rule, keeping an upload."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from daemon import sidecar
from daemon.config import ImageLimits
from daemon.doctor import check_api
from daemon.errors import ImageError
from daemon.pipeline import admit
from daemon.pipeline.keep import keep_upload
from daemon.pipeline.upload import (
    UnsupportedImageError,
    display_name,
    load_upload,
    pillow_formats,
    run_upload,
    upload_rule,
)
from daemon.service.state import ServiceState, state_from_json, state_to_json
from tests.fixtures_api import ApiWorld, png


def test_pillow_formats_follow_the_configured_extensions() -> None:
    """images.extensions decide which decoders may look at an upload."""
    assert pillow_formats(ImageLimits().extensions) == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    assert pillow_formats((".png", ".PNG", ".xyz")) == ("PNG",)


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("C:\\Users\\ana\\shot.jpg", "shot.jpg"),
        ("bad\x00name\n.png", "badname.png"),
        ("", "upload.png"),
        (None, "upload.png"),
        ("...", "upload.png"),
    ],
)
def test_display_name_is_one_printable_name_never_a_path(given: str | None, shown: str) -> None:
    """The client's file name is only shown, cleaned of folders and control characters."""
    assert display_name(given, "PNG") == shown


def test_load_upload_restricts_pillow_to_the_supported_formats() -> None:
    """A PNG passes with PNG allowed; with only JPEG allowed it is not an image promptd reads."""
    data = png()
    assert load_upload(data, "a.png", ImageLimits()).format == "PNG"
    with pytest.raises(UnsupportedImageError):
        load_upload(data, "a.png", ImageLimits(extensions=(".jpg",)))


def test_load_upload_honours_images_max_bytes() -> None:
    """images.max_bytes applies to uploads as to files."""
    with pytest.raises(ImageError, match="max_bytes"):
        load_upload(png(), "a.png", ImageLimits(max_bytes=100))


def test_upload_rule_takes_the_save_to_folders_rule(api_world: ApiWorld) -> None:
    """With api.save_to in an inbox, that folder's .promptd.yaml shapes the upload's rule."""
    folder = api_world.inbox / "uploads"
    folder.mkdir()
    (folder / ".promptd.yaml").write_text("trigger_words: [zxq]\n", encoding="utf-8")
    ctx = api_world.view.ctx
    rule = upload_rule(ctx, mode="clip", hint="be brief", folder=folder)
    assert rule.settings.trigger_words == ("zxq",) and rule.settings.mode == "clip"
    assert rule.sources[-1] == folder / ".promptd.yaml"
    plain = upload_rule(ctx, mode=None, hint="")
    assert plain.settings == api_world.config.defaults
    with pytest.raises(ValueError, match="1000"):
        upload_rule(ctx, mode=None, hint="x" * 1001)


def test_keep_upload_twice_keeps_one_image_and_fresh_sidecars(api_world: ApiWorld) -> None:
    """Keeping the same bytes again rewrites the sidecars beside the one image, fresh for the
    folder; kept under a mode the folder's rule does not have, the folder redoes it."""
    ctx = api_world.view.ctx
    folder = api_world.inbox / "kept"
    data = png()
    loaded = load_upload(data, "x.png", ctx.config.images)
    outcome = run_upload(loaded, upload_rule(ctx, mode=None, hint="", folder=folder), ctx)
    first = keep_upload(outcome, data, folder, ctx.config.images.extensions)
    second = keep_upload(outcome, data, folder, ctx.config.images.extensions)
    assert first.image == second.image
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            first.image.name,
            first.image.with_suffix(".txt").name,
            first.image.with_suffix(".json").name,
        ]
    )
    doc = sidecar.read_sidecar(first.image.with_suffix(".json"))
    assert doc is not None and sidecar.validate_sidecar(doc) == []
    assert getattr(admit(first.image, ctx), "reason", "") == "up to date (fresh)"
    other = run_upload(loaded, upload_rule(ctx, mode="clip", hint="", folder=folder), ctx)
    keep_upload(other, data, folder, ctx.config.images.extensions)
    assert not hasattr(admit(first.image, ctx), "outcome")  # a request's own mode: redone


def test_state_keeps_the_api_url() -> None:
    """The status file records where the API listens, and reads back without it too."""
    from datetime import datetime, timezone

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    state = ServiceState(pid=1, started_at=now, updated_at=now, api_url="http://127.0.0.1:8765/")
    assert state_from_json(state_to_json(state), None).api_url == "http://127.0.0.1:8765/"  # type: ignore[arg-type]


def test_doctor_says_where_the_api_listens_and_if_the_port_is_taken(
    make_world: Callable[..., ApiWorld],
) -> None:
    """Off, free port, or taken by another program: doctor says which."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        busy = make_world(api={"listen": f"127.0.0.1:{port}"})
        (check,) = check_api(busy.config, timeout_s=0.5)
        assert check.level == "fail" and "taken" in check.detail
    finally:
        taken.close()
    (free,) = check_api(make_world(api={"listen": f"127.0.0.1:{port}"}).config)
    assert free.level == "ok" and f"127.0.0.1:{port}/" in free.detail
    (off,) = check_api(make_world(api={"enabled": False}).config)
    assert off.level == "ok" and "off" in off.detail
