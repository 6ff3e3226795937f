"""The other endpoints: the SSE stream, /image-context, A1111's routes, /health and /api/status."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from daemon.pipeline.compose.schemas import CONTEXT_FIELDS
from daemon.sidecar import validate_sidecar
from tests.fake_ollama import FakeOllama
from tests.fixtures_api import ApiWorld, png

STREAM = "/api/images/analyze-stream"


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event in an SSE body; comment lines skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next(line[7:] for line in lines if line.startswith("event: "))
        data = json.loads("".join(line[6:] for line in lines if line.startswith("data: ")))
        events.append((name, data))
    return events


def test_stream_sends_the_seed_stages_in_order_then_complete(api_world: ApiWorld) -> None:
    """analyzing, analyzed (with the analysis), generating, complete (with the prompt)."""
    answer = api_world.client.post(
        STREAM, files={"image": ("a.png", png(), "image/png")}, data={"user_prompt": "calm"}
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = sse_events(answer.text)
    assert [name for name, _ in events] == ["analyzing", "analyzed", "generating", "complete"]
    assert all(data["status"] == name for name, data in events)
    assert set(events[1][1]["analysis"]) >= {"style", "mood"}
    final = events[-1][1]
    assert final["success"] is True and final["userInput"] == "calm"
    assert final["generatedPrompt"] == final["sidecar"]["prompt"]
    assert validate_sidecar(final["sidecar"]) == []


def test_stream_bad_image_is_refused_before_the_stream_opens(api_world: ApiWorld) -> None:
    """Not an image: a plain 415 answer, not an event stream."""
    answer = api_world.client.post(STREAM, files={"image": ("a.png", b"nope" * 10, "image/png")})
    assert answer.status_code == 415
    assert answer.headers["content-type"].startswith("application/json")


def test_stream_timeout_ends_with_failed_never_error(make_world: Callable[..., ApiWorld]) -> None:
    """A failure mid-stream is a terminal `failed` event carrying the 504; no event is `error`."""
    world = make_world(api={"timeout_s": 1.0})
    world.view.ctx.analyzer.load()  # type: ignore[union-attr]  # CLIP's first load is slow
    world.ollama.delay_s = 4.0
    answer = world.client.post(STREAM, files={"image": ("a.png", png(), "image/png")})
    events = sse_events(answer.text)
    names = [name for name, _ in events]
    stages = ["analyzing", "analyzed", "generating"]
    assert names[-1] == "failed" and names[:-1] == stages[: len(names) - 1]  # stages so far
    assert "error" not in names
    assert events[-1][1]["http_status"] == 504
    assert events[-1][1]["error"]["kind"] == "timeout"


def test_image_context_gives_seed_001_fields_from_the_vision_model(api_world: ApiWorld) -> None:
    """The ten ImageContext fields, mode vision, from the model that sees the image."""
    answer = api_world.client.post("/image-context", files={"file": ("a.png", png(), "image/png")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(CONTEXT_FIELDS) <= set(body)
    assert body["mode"] == "vision" and body["note"] is None
    assert isinstance(body["objects"], list) and body["generative_prompt"]
    (chat,) = api_world.ollama.bodies()
    assert chat["model"] == "gemma3:4b" and chat["messages"][-1]["images"]


def test_image_context_without_a_vision_model_uses_quality_and_says_so(
    make_world: Callable[..., ApiWorld],
) -> None:
    """No vision capability: quality mode answers, and `note` says why."""
    blind = FakeOllama({"llama3.2:latest": ("completion",), "mistral:latest": ("completion",),
                        "gemma3:4b": ("completion",)}).start()  # fmt: skip
    world = make_world(ollama=blind)
    body = world.client.post("/image-context", files={"file": ("a.png", png(), "image/png")}).json()
    assert body["mode"] == "quality"
    assert "no vision model" in body["note"] and "vision" in body["note"]
    assert set(CONTEXT_FIELDS) <= set(body)
    assert [b["model"] for b in world.ollama.bodies()] == ["mistral:latest"]


def test_image_context_with_ollama_down_is_503(api_world: ApiWorld) -> None:
    """No language model at all: 503 with the reason, not made-up fields."""
    api_world.ollama.down()
    answer = api_world.client.post("/image-context", files={"file": ("a.png", png(), "image/png")})
    assert answer.status_code == 503
    assert "not reachable" in answer.json()["error"]["message"]


def test_interrogate_takes_bare_base64_and_data_urls(api_world: ApiWorld) -> None:
    """chaiNNer sends bare base64, webuiapi a data: URL; both get {"caption": ...}."""
    encoded = base64.b64encode(png()).decode()
    for image in (encoded, f"data:image/png;base64,{encoded}"):
        answer = api_world.client.post("/sdapi/v1/interrogate", json={"image": image})
        assert answer.status_code == 200
        assert set(answer.json()) == {"caption"} and len(answer.json()["caption"]) > 3
    assert [b["model"] for b in api_world.ollama.bodies()] == ["llama3.2:latest"] * 2


def test_interrogate_deepdanbooru_gives_clip_tags_without_a_model(api_world: ApiWorld) -> None:
    """deepdanbooru: comma-separated tags from CLIP alone."""
    encoded = base64.b64encode(png()).decode()
    answer = api_world.client.post(
        "/sdapi/v1/interrogate", json={"image": encoded, "model": "deepdanbooru", "extra": 1}
    )
    assert answer.status_code == 200
    assert "," in answer.json()["caption"]
    assert api_world.ollama.bodies() == []


def test_interrogate_unknown_model_and_bad_base64_answer_in_a1111_shape(
    api_world: ApiWorld,
) -> None:
    """404 Model not found, 422 for bad base64: {error, detail, body, errors}."""
    unknown = api_world.client.post("/sdapi/v1/interrogate", json={"image": "x", "model": "blip2"})
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == "Model not found"
    assert set(unknown.json()) == {"error", "detail", "body", "errors"}
    bad = api_world.client.post("/sdapi/v1/interrogate", json={"image": "%%%not base64%%%"})
    assert bad.status_code == 422
    assert "base64" in bad.json()["detail"]
    empty = api_world.client.post("/sdapi/v1/interrogate", json={})
    assert empty.status_code == 422


def test_sdapi_options_and_ping_answer_like_a1111(api_world: ApiWorld) -> None:
    """chaiNNer's probe: 200 with a JSON object; /internal/ping gives {}."""
    options = api_world.client.get("/sdapi/v1/options")
    assert options.status_code == 200 and isinstance(options.json(), dict) and options.json()
    assert api_world.client.get("/internal/ping").json() == {}


def test_health_reports_service_clip_ollama_and_queues(api_world: ApiWorld) -> None:
    """/health: the service, CLIP, Ollama and both queues."""
    api_world.view.queue.put(api_world.inbox / "waiting.png")
    body = api_world.client.get("/health").json()
    assert body["status"] == "ok" and body["service"]["name"] == "promptd"
    assert body["clip"]["model"] == api_world.config.clip.model
    assert body["ollama"]["host"] == api_world.ollama.url
    assert body["queue"] == {"folder": 1, "uploads": 0, "uploads_max": 32}


def test_status_is_what_promptd_status_shows(api_world: ApiWorld) -> None:
    """/api/status: the status file's fields plus the text `promptd status` prints."""
    body = api_world.client.get("/api/status").json()
    assert body["schema"] == "promptd.state/1" and body["queue"] == 0
    assert body["text"].startswith("promptd is running")
    assert "held folders: none" in body["text"]


def test_openapi_lists_every_endpoint(api_world: ApiWorld) -> None:
    """/openapi.json (behind /docs) names each route of the API."""
    paths = set(api_world.client.get("/openapi.json").json()["paths"])
    assert {"/api/images/analyze", "/api/images/analyze-stream", "/image-context",
            "/sdapi/v1/interrogate", "/sdapi/v1/options", "/api/images/analyze-json",
            "/health", "/api/status", "/api/gallery", "/api/tokens"} <= paths  # fmt: skip
