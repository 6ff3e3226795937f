"""POST /api/images/analyze and its JSON twin, through the real pipeline (tiny CLIP, fake Ollama)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon import sidecar
from daemon.pipeline import admit
from daemon.sidecar import validate_sidecar
from tests.daemon_helpers import wait_until
from tests.fixtures_api import ApiWorld, jpeg, png
from tests.images import BOMB_SIDE, png_with_header_size

ANALYZE = "/api/images/analyze"


def post_image(world: ApiWorld, data: bytes, name: str = "photo.png", **fields: Any) -> Any:
    """POST ``data`` as the multipart ``image`` part with the other ``fields``."""
    return world.client.post(ANALYZE, files={"image": (name, data, "image/png")}, data=fields)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_analyze_answers_seed_fields_and_the_whole_sidecar_document(api_world: ApiWorld) -> None:
    """success, generatedPrompt, analysis (value/score), userInput, and a schema-valid record."""
    answer = post_image(api_world, png(), user_prompt="  name the shoe's colourway ")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True
    assert body["userInput"] == "name the shoe's colourway"
    assert body["generatedPrompt"] == body["sidecar"]["prompt"]
    assert set(body["analysis"]) == {"style", "mood", "composition", "color_palette", "subjects"}
    assert {"value", "score"} == set(body["analysis"]["style"][0])
    doc = body["sidecar"]
    assert validate_sidecar(doc) == []
    assert doc["status"] == "ok" and doc["mode"] == "speed"
    assert doc["rule"]["settings"]["hint"] == "name the shoe's colourway"
    assert doc["outputs"] == {"txt": None, "txt_sha256": None, "txt_kept": False}
    assert doc["image"]["file"] == "photo.png" and doc["image"]["format"] == "PNG"


def test_analyze_user_prompt_reaches_the_llm_as_fenced_instructions(api_world: ApiWorld) -> None:
    """The user's words go to the model last, inside <user_instructions>."""
    post_image(api_world, png(), user_prompt="always mention the red laces")
    (chat,) = api_world.ollama.bodies()
    last = chat["messages"][-1]["content"]
    assert "<user_instructions>\nalways mention the red laces\n</user_instructions>" in last
    assert last.rstrip().endswith("</user_instructions>")


def test_analyze_writes_nothing_without_save_to(api_world: ApiWorld) -> None:
    """An upload is analysed in memory: the inbox stays as it was."""
    before = files_under(api_world.inbox)
    assert post_image(api_world, png()).status_code == 200
    assert files_under(api_world.inbox) == before


def test_analyze_deep_thinking_means_quality_and_mode_overrides_it(api_world: ApiWorld) -> None:
    """deep_thinking true asks the quality model; an explicit mode wins over it."""
    deep = post_image(api_world, png(), deep_thinking="true").json()
    assert deep["sidecar"]["mode"] == "quality"
    assert deep["sidecar"]["context"]["brief_caption"]
    clip = post_image(api_world, png(), deep_thinking="true", mode="clip").json()
    assert clip["sidecar"]["mode"] == "clip"
    models = [b["model"] for b in api_world.ollama.bodies()]
    assert models == ["mistral:latest"]  # clip mode asked no model


def test_analyze_trusts_the_bytes_not_the_declared_type_or_name(api_world: ApiWorld) -> None:
    """A JPEG sent as text/plain named notes.txt is still a JPEG."""
    answer = api_world.client.post(ANALYZE, files={"image": ("notes.txt", jpeg(), "text/plain")})
    assert answer.status_code == 200
    assert answer.json()["sidecar"]["image"]["format"] == "JPEG"


def test_analyze_not_an_image_is_415(api_world: ApiWorld) -> None:
    """Text bytes declared as image/png get 415 saying Pillow found no supported format."""
    answer = post_image(api_world, b"this is a shopping list, not a picture\n" * 4)
    assert answer.status_code == 415
    assert answer.json()["error"]["kind"] == "unsupported_image"
    assert "PNG" in answer.json()["error"]["message"]


def test_analyze_format_outside_the_supported_ones_is_415(api_world: ApiWorld) -> None:
    """A real image in a format promptd does not read (PPM) is refused, not decoded."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PPM")
    assert post_image(api_world, buffer.getvalue(), name="x.png").status_code == 415


def test_analyze_truncated_bomb_and_empty_are_422_with_the_reason(api_world: ApiWorld) -> None:
    """Damaged, oversized-in-pixels and empty images get 422 and promptd's reason."""
    whole = png((160, 120))
    truncated = post_image(api_world, whole[: len(whole) // 2])
    assert truncated.status_code == 422
    assert "truncated" in truncated.json()["error"]["message"]
    bomb = post_image(api_world, png_with_header_size(BOMB_SIDE, BOMB_SIDE))
    assert bomb.status_code == 422
    assert "pixels" in bomb.json()["error"]["message"]
    empty = post_image(api_world, b"")
    assert empty.status_code == 422
    assert "empty" in empty.json()["error"]["message"]


def test_analyze_missing_image_and_long_user_prompt_are_422(api_world: ApiWorld) -> None:
    """Missing fields and a user prompt over 1,000 characters are refused before any work."""
    missing = api_world.client.post(ANALYZE, data={"user_prompt": "hello"})
    assert missing.status_code == 422
    assert "image" in missing.json()["error"]["message"]
    long = post_image(api_world, png(), user_prompt="x" * 1001)
    assert long.status_code == 422
    bad_mode = post_image(api_world, png(), mode="turbo")
    assert bad_mode.status_code == 422
    assert api_world.ollama.bodies() == []


def test_analyze_image_over_the_upload_limit_is_413(make_world: Callable[..., ApiWorld]) -> None:
    """An image part over api.max_upload_bytes gets 413 (the body limit has room for fields)."""
    world = make_world(api={"max_upload_bytes": 20_000})
    answer = post_image(world, png((400, 400), hue=5) + b"\0" * 30_000)
    assert answer.status_code == 413
    assert "api.max_upload_bytes" in answer.json()["error"]["message"]


def test_analyze_body_far_over_the_limit_is_413_from_the_guard(
    make_world: Callable[..., ApiWorld],
) -> None:
    """A body past the limit plus the multipart slack is refused by the guard itself."""
    world = make_world(api={"max_upload_bytes": 2048})
    answer = post_image(world, b"\0" * 600_000)
    assert answer.status_code == 413
    assert answer.json()["error"]["kind"] == "too_large"


def test_analyze_json_takes_base64_and_answers_the_same(api_world: ApiWorld) -> None:
    """/api/images/analyze-json (ComfyUI-style nodes) takes base64 and a data: URL."""
    import base64

    encoded = base64.b64encode(png()).decode()
    for image in (encoded, f"data:image/png;base64,{encoded}"):
        answer = api_world.client.post(
            "/api/images/analyze-json", json={"image": image, "user_prompt": "moody"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["userInput"] == "moody"
        assert validate_sidecar(answer.json()["sidecar"]) == []


def test_analyze_save_to_keeps_the_upload_with_sidecars_the_folder_finds_fresh(
    make_world: Callable[..., ApiWorld],
) -> None:
    """With api.save_to inside the inbox, image and sidecars land there, already up to date."""
    world = make_world(api={"save_to": "inbox/uploads"})
    answer = post_image(world, png(), name="../../etc/passwd.png")
    assert answer.status_code == 200
    kept = sorted((world.inbox / "uploads").iterdir())
    names = [p.name for p in kept]
    assert len(names) == 3 and all(n.startswith("upload-") for n in names)
    image = next(p for p in kept if p.suffix == ".png")
    doc = sidecar.read_sidecar(image.with_suffix(".json"))
    assert doc is not None and validate_sidecar(doc) == []
    assert image.with_suffix(".txt").read_text("utf-8").strip() == doc["prompt"]
    result = admit(image, world.view.ctx)
    assert getattr(result, "reason", "") == "up to date (fresh)"


def test_analyze_twenty_concurrent_requests_are_all_answered(api_world: ApiWorld) -> None:
    """20 clients at once: every one gets its own prompt (none lost, none refused)."""
    api_world.ollama.delay_s = 0.02
    answers: list[int] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        status = post_image(api_world, png(hue=index), user_prompt=f"request {index}").status_code
        with lock:
            answers.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert answers == [200] * 20
    hints = {b["messages"][-1]["content"].split("<user_instructions>\n")[1].split("\n")[0]
             for b in api_world.ollama.bodies()}  # fmt: skip
    assert hints == {f"request {i}" for i in range(20)}
    assert api_world.deps.runner.pending == 0


def test_analyze_beyond_max_pending_is_429_with_retry_after(
    make_world: Callable[..., ApiWorld],
) -> None:
    """With one upload in flight and api.max_pending 1, the next gets 429 and Retry-After."""
    world = make_world(api={"max_pending": 1})
    world.ollama.delay_s = 5.0
    first: list[int] = []
    thread = threading.Thread(target=lambda: first.append(post_image(world, png()).status_code))
    thread.start()
    wait_until(lambda: world.deps.runner.pending == 1, 30, "the first upload to be admitted")
    second = post_image(world, png(hue=3))
    assert second.status_code == 429
    assert int(second.headers["Retry-After"]) >= 1
    world.ollama.delay_s = 0.0
    thread.join(60)
    assert first == [200]


def test_analyze_past_timeout_is_504(make_world: Callable[..., ApiWorld]) -> None:
    """A model slower than api.timeout_s: 504, and the slot comes back once the call ends."""
    world = make_world(api={"timeout_s": 0.5})
    world.ollama.delay_s = 3.0
    answer = post_image(world, png())
    assert answer.status_code == 504
    assert "api.timeout_s" in answer.json()["error"]["message"]
    wait_until(lambda: world.deps.runner.pending == 0, 30, "the slow call's slot to come back")
