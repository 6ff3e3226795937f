"""The review page's gallery: listing, filters, pages, thumbnails, caption edits, find-and-replace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon import sidecar
from daemon.api.gallery import item_id, parse_id
from daemon.api.thumbs import ThumbCache
from daemon.pipeline import process_batch
from daemon.sidecar import validate_sidecar
from tests.daemon_helpers import write_images
from tests.fixtures_api import ApiWorld, png

GALLERY = "/api/gallery"


@pytest.fixture
def inbox(api_world: ApiWorld) -> dict[str, Path]:
    """An inbox with an image of every status: ok (3), degraded, error, held, pending."""
    root = api_world.inbox
    ok = write_images(root / "set", 3, prefix="ok")
    process_batch(ok, api_world.view.ctx)
    bad = root / "set" / "broken.png"
    bad.write_bytes(png()[:40])
    process_batch([bad], api_world.view.ctx)
    api_world.ollama.down()
    degraded = write_images(root / "later", 1, prefix="fallback")
    process_batch(degraded, api_world.view.ctx)
    api_world.ollama.up()
    held = write_images(root / "held", 1, prefix="waiting")
    (root / "held" / ".promptd.yaml").write_text("mode: turbo\n", encoding="utf-8")
    pending = write_images(root / "new", 1, prefix="fresh")
    return {
        "ok": ok[0],
        "error": bad,
        "degraded": degraded[0],
        "held": held[0],
        "pending": pending[0],
    }


def page(world: ApiWorld, **params: Any) -> dict[str, Any]:
    answer = world.client.get(GALLERY, params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def find(world: ApiWorld, image: Path) -> dict[str, Any]:
    key = image.relative_to(world.inbox).as_posix()
    (item,) = [i for i in page(world, limit=200)["items"] if i["key"] == key]
    return item


def test_gallery_lists_every_image_with_its_status(
    api_world: ApiWorld, inbox: dict[str, Path]
) -> None:
    """ok, degraded, error, held and pending images are told apart, with their counts."""
    body = page(api_world)
    assert body["counts"] == {"all": 7, "ok": 3, "degraded": 1, "error": 1, "held": 1, "pending": 1}
    for status, image in inbox.items():
        assert find(api_world, image)["status"] == status
    assert "turbo" in find(api_world, inbox["held"])["reason"]
    assert find(api_world, inbox["ok"])["owner"] == "promptd"
    assert find(api_world, inbox["ok"])["caption"]
    assert not any(i["name"].endswith((".txt", ".json", ".yaml")) for i in body["items"])


def test_gallery_filters_by_status_and_text(api_world: ApiWorld, inbox: dict[str, Path]) -> None:
    """status= keeps one status; q= keeps captions (or paths) holding the text, any case."""
    assert [i["status"] for i in page(api_world, status="error")["items"]] == ["error"]
    assert page(api_world, status="ok")["total"] == 3
    word = find(api_world, inbox["ok"])["caption"].split(",")[0].strip().upper()
    found = page(api_world, q=word)
    assert found["total"] >= 1
    assert all(word.lower() in (i["caption"] + i["key"]).lower() for i in found["items"])
    assert page(api_world, q="no caption says this zzqx")["total"] == 0


def test_gallery_pages_a_large_inbox(api_world: ApiWorld) -> None:
    """120 images come 50 at a time: totals, offsets, no repeats, nothing missed."""
    write_images(api_world.inbox / "many", 120)
    seen: list[str] = []
    for offset in (0, 50, 100):
        body = page(api_world, offset=offset, limit=50)
        assert body["total"] == 120
        seen += [i["id"] for i in body["items"]]
    assert len(seen) == len(set(seen)) == 120
    assert api_world.client.get(GALLERY, params={"limit": 5000}).status_code == 422


def test_gallery_record_and_thumbnail(api_world: ApiWorld, inbox: dict[str, Path]) -> None:
    """One item's record as on disk; its thumbnail is a JPEG made once and then cached."""
    item = find(api_world, inbox["ok"])
    record = api_world.client.get(f"{GALLERY}/{item['id']}").json()
    assert record["record"] == sidecar.read_sidecar(inbox["ok"].with_suffix(".json"))
    assert record["tokens"] > 0 and record["tokens_exact"] is True
    for _ in range(2):
        thumb = api_world.client.get(f"{GALLERY}/{item['id']}/thumb")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    assert api_world.deps.thumbs.made == 1
    broken = find(api_world, inbox["error"])
    assert api_world.client.get(f"{GALLERY}/{broken['id']}/thumb").status_code == 422


def test_thumb_cache_is_bounded_in_count_and_bytes() -> None:
    """Least recently used entries go first, past either bound."""
    cache = ThumbCache(max_bytes=1000, max_items=3)
    for n in range(5):
        cache.put((f"p{n}", 1, 1, 256), b"x" * 100)
    assert cache.size == (3, 300)
    assert cache.get(("p0", 1, 1, 256)) is None and cache.get(("p4", 1, 1, 256)) is not None
    cache.put(("big", 1, 1, 256), b"y" * 900)
    assert cache.size[1] <= 1000
    cache.put(("huge", 1, 1, 256), b"z" * 5000)
    assert cache.get(("huge", 1, 1, 256)) is None


@pytest.mark.parametrize(
    "key", ["../outside.png", "/etc/passwd", "set/../../x.png", "set//ok-0000.png", "a\\b.png"]
)
def test_gallery_ids_that_leave_the_inbox_are_refused(api_world: ApiWorld, key: str) -> None:
    """No id can name a file outside the inbox: malformed ones parse to nothing, and 404."""
    forged = item_id(0, key)
    assert parse_id(forged) is None
    assert api_world.client.get(f"{GALLERY}/{forged}").status_code == 404
    assert api_world.client.get(f"{GALLERY}/not-base64!!").status_code == 404


def test_gallery_never_lists_or_serves_a_symlinked_image(
    api_world: ApiWorld, tmp_path: Path
) -> None:
    """A symlink in the inbox pointing out of it is neither listed nor reachable by id."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    (api_world.inbox / "link.png").symlink_to(secret)
    assert page(api_world)["total"] == 0
    assert api_world.client.get(f"{GALLERY}/{item_id(0, 'link.png')}/thumb").status_code == 404


def test_caption_edit_is_written_and_stays_the_users(
    api_world: ApiWorld, inbox: dict[str, Path]
) -> None:
    """An edit lands atomically in the .txt, the record says so, and a redo keeps it."""
    image = inbox["ok"]
    item = find(api_world, image)
    answer = api_world.client.put(
        f"{GALLERY}/{item['id']}/caption", json={"caption": "  my own words,\n  red coat  "}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["owner"] == "user" and answer.json()["caption"] == "my own words, red coat"
    txt = image.with_suffix(".txt")
    assert txt.read_text("utf-8") == "my own words, red coat\n"
    doc = sidecar.read_sidecar(image.with_suffix(".json"))
    assert doc is not None and validate_sidecar(doc) == []
    assert doc["outputs"] == {"txt": None, "txt_sha256": None, "txt_kept": True}
    assert not sidecar.txt_is_ours(txt, doc)
    assert find(api_world, image)["owner"] == "user"
    process_batch([image], api_world.view.ctx, force=True)  # promptd redoes the image
    assert txt.read_text("utf-8") == "my own words, red coat\n"
    assert not [p for p in image.parent.iterdir() if ".promptd-tmp." in p.name]


@pytest.mark.parametrize("caption", ["", "   ", "bell\x07here", "zero\u200bwidth", "x" * 10_001])
def test_caption_edit_refuses_bad_captions(
    api_world: ApiWorld, inbox: dict[str, Path], caption: str
) -> None:
    """Empty, control or invisible characters, or too long: 422 and the file untouched."""
    image = inbox["ok"]
    before = image.with_suffix(".txt").read_bytes()
    item = find(api_world, image)
    answer = api_world.client.put(f"{GALLERY}/{item['id']}/caption", json={"caption": caption})
    assert answer.status_code == 422
    assert image.with_suffix(".txt").read_bytes() == before


def test_caption_edit_of_a_pending_image_creates_a_user_caption(
    api_world: ApiWorld, inbox: dict[str, Path]
) -> None:
    """An image with no sidecars yet gets a .txt that promptd will keep."""
    image = inbox["pending"]
    item = find(api_world, image)
    assert (
        api_world.client.put(
            f"{GALLERY}/{item['id']}/caption", json={"caption": "mine"}
        ).status_code
        == 200
    )
    process_batch([image], api_world.view.ctx)
    assert image.with_suffix(".txt").read_text("utf-8") == "mine\n"
    doc = sidecar.read_sidecar(image.with_suffix(".json"))
    assert doc is not None and doc["outputs"]["txt_kept"] is True


def test_replace_previews_then_writes_only_with_the_previews_token(
    api_world: ApiWorld, inbox: dict[str, Path]
) -> None:
    """Find-and-replace over the filtered captions: preview, then apply with its token."""
    ok_items = page(api_world, status="ok")["items"]
    word = ok_items[0]["caption"].split(",")[0].strip()
    request = {"find": word, "replace": "REPLACED", "status": "ok"}
    preview = api_world.client.post("/api/captions/replace", json=request).json()
    assert preview["applied"] is False and preview["total"] >= 1
    assert all("REPLACED" in c["after"] for c in preview["changes"])
    assert "REPLACED" not in inbox["ok"].with_suffix(".txt").read_text("utf-8")
    stale = api_world.client.post("/api/captions/replace", json={**request, "token": "0" * 32})
    assert stale.status_code == 409
    done = api_world.client.post(
        "/api/captions/replace", json={**request, "token": preview["token"]}
    )
    assert done.status_code == 200 and done.json()["written"] == preview["total"]
    changed = [c["key"] for c in preview["changes"]]
    for key in changed:
        image = api_world.inbox / key
        assert "REPLACED" in image.with_suffix(".txt").read_text("utf-8")
        assert find(api_world, image)["owner"] == "user"
    again = api_world.client.post(
        "/api/captions/replace", json={**request, "token": preview["token"]}
    )
    assert again.status_code == 409  # nothing matches any more: the old preview is void


def test_replace_never_empties_a_caption(api_world: ApiWorld, inbox: dict[str, Path]) -> None:
    """A replacement that would leave nothing is listed and left alone."""
    item = find(api_world, inbox["ok"])
    api_world.client.put(f"{GALLERY}/{item['id']}/caption", json={"caption": "solo"})
    preview = api_world.client.post(
        "/api/captions/replace", json={"find": "solo", "replace": "", "q": "solo"}
    ).json()
    assert preview["total"] == 0 and preview["emptied"] == [item["key"]]


def test_tokens_counts_with_clips_tokenizer(api_world: ApiWorld) -> None:
    """/api/tokens counts what the pipeline counts, against 75."""
    text = "a red coat, soft window light, portrait of a woman"
    body = api_world.client.post("/api/tokens", json={"text": text}).json()
    analyzer = api_world.view.ctx.analyzer
    assert analyzer is not None
    assert body["count"] == analyzer.count_tokens(text) and body["exact"] is True
    assert body["limit"] == 75 and body["over"] is False
    long = api_world.client.post("/api/tokens", json={"text": "red, " * 60}).json()
    assert long["over"] is True
