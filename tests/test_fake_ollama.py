"""The fake Ollama server speaks the real protocol, proven with the official `ollama` client."""

from __future__ import annotations

import base64
import io
import json
import threading

import httpx
import jsonschema
import ollama
import pytest
from PIL import Image

from tests.fake_ollama import BUSY_TEXT, FakeOllama
from tests.fake_ollama_wire import (
    RequestProblem,
    go_b64decode,
    instance_from_schema,
    keep_alive_seconds,
)

USER = [{"role": "user", "content": "subjects: lighthouse (0.91), seascape (0.05)"}]


def _client(server: FakeOllama, timeout: float = 5.0) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=timeout)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def test_chat_stream_yields_chunks_then_a_done_line_with_integer_metrics(fake_ollama):
    """A streamed chat gives content chunks and a final done line with reason and ns metrics."""
    parts = list(_client(fake_ollama).chat("llama3.2", messages=USER, stream=True))
    assert len(parts) > 2
    assert all(not p.done for p in parts[:-1])
    final = parts[-1]
    assert final.done and final.done_reason == "stop"
    assert isinstance(final.total_duration, int) and final.total_duration > 0
    assert isinstance(final.eval_count, int) and isinstance(final.eval_duration, int)
    text = "".join(p.message.content or "" for p in parts)
    assert "lighthouse" in text


def test_chat_without_stream_field_defaults_to_ndjson(fake_ollama):
    """A body without `stream` is answered as application/x-ndjson, one object per line."""
    response = httpx.post(
        f"{fake_ollama.url}/api/chat", json={"model": "llama3.2", "messages": USER}
    )
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = response.text.splitlines()
    assert all(line.strip() for line in lines)
    assert json.loads(lines[-1])["done"] is True


def test_chat_non_stream_returns_one_object_with_the_whole_text(fake_ollama):
    """stream=False gives one application/json object holding the full answer."""
    response = httpx.post(
        f"{fake_ollama.url}/api/chat", json={"model": "llama3.2", "messages": USER, "stream": False}
    )
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["done"] is True and body["done_reason"] == "stop"
    assert "lighthouse" in body["message"]["content"]
    assert body["message"]["role"] == "assistant"


def test_generate_stream_and_non_stream_answer_in_response(fake_ollama):
    """Generate uses `response` on every chunk and returns `context` on the last one."""
    client = _client(fake_ollama)
    whole = client.generate("mistral", "paint a red barn (0.7)")
    assert "red barn" in whole.response and whole.done_reason == "stop" and whole.context
    chunks = list(client.generate("mistral", "paint a red barn (0.7)", stream=True))
    assert "".join(c.response for c in chunks) == whole.response


def test_format_schema_answer_validates_against_the_schema(fake_ollama):
    """A JSON-schema `format` is answered with a valid instance built from the request words."""
    schema = {
        "$defs": {
            "Tag": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
            }
        },
        "type": "object",
        "properties": {
            "prompt": {"type": "string"},
            "kind": {"type": "string", "enum": ["photo", "drawing"]},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
            "count": {"type": "integer"},
        },
        "required": ["prompt", "kind", "tags", "count"],
    }
    reply = _client(fake_ollama).chat("llama3.2", messages=USER, format=schema)
    instance = json.loads(reply.message.content)
    jsonschema.validate(instance, schema)
    assert "lighthouse" in instance["prompt"] and instance["kind"] == "photo"
    assert len(instance["tags"]) == 2


def test_num_predict_truncates_with_done_reason_length(fake_ollama):
    """An answer longer than num_predict is cut off and ends with done_reason "length"."""
    schema = {
        "type": "object",
        "properties": {"prompt": {"type": "string"}},
        "required": ["prompt"],
    }
    reply = _client(fake_ollama).chat(
        "llama3.2", messages=USER, format=schema, options={"num_predict": 3}
    )
    assert reply.done_reason == "length"
    assert len(reply.message.content) == 12
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.message.content)


def test_show_lists_capabilities_and_list_reports_full_names(fake_ollama):
    """/api/show gives capabilities; /api/tags lists name:tag for every installed model."""
    client = _client(fake_ollama)
    assert set(client.show("gemma3:4b").capabilities or []) == {"completion", "vision"}
    assert client.show("llama3.2").capabilities == ["completion"]
    names = [m.model for m in client.list().models]
    assert names == ["llama3.2:latest", "mistral:latest", "gemma3:4b", "gemma3:1b"]


def test_version_root_and_ps_answer_like_ollama(fake_ollama):
    """`/` says Ollama is running, /api/version has a version, /api/ps lists loaded models."""
    root = httpx.get(fake_ollama.url)
    assert root.text == "Ollama is running"
    assert root.headers["content-type"] == "text/plain; charset=utf-8"
    assert httpx.get(f"{fake_ollama.url}/api/version").json() == {"version": "0.12.3"}
    client = _client(fake_ollama)
    assert client.ps().models == []
    client.chat("gemma3:4b", messages=[])
    assert [m.model for m in client.ps().models] == ["gemma3:4b"]


def test_unknown_model_raises_response_error_404(fake_ollama):
    """An uninstalled model gives 404 `model 'X' not found` on chat and show."""
    client = _client(fake_ollama)
    with pytest.raises(ollama.ResponseError) as chat_error:
        client.chat("qwen9", messages=USER)
    assert chat_error.value.status_code == 404
    assert chat_error.value.error == "model 'qwen9' not found"
    with pytest.raises(ollama.ResponseError) as show_error:
        client.show("qwen9")
    assert show_error.value.status_code == 404


def test_missing_switch_hides_a_model_from_tags_and_chat(fake_ollama):
    """Models named in `missing` disappear from the list and answer 404."""
    fake_ollama.missing.add("mistral")
    client = _client(fake_ollama)
    assert "mistral:latest" not in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as error:
        client.chat("mistral:latest", messages=USER)
    assert error.value.status_code == 404


def test_empty_model_is_400_model_is_required(fake_ollama):
    """Chat and show without a model are refused with 400 `model is required`."""
    for path, body in (("/api/chat", {"messages": USER}), ("/api/show", {})):
        response = httpx.post(f"{fake_ollama.url}{path}", json=body)
        assert response.status_code == 400
        assert response.json() == {"error": "model is required"}


def test_busy_count_gives_503_with_the_exact_text_then_recovers(fake_ollama):
    """The next `busy_count` model requests get 503 with Ollama's queue-full text."""
    fake_ollama.busy_count = 2
    client = _client(fake_ollama)
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as error:
            client.chat("llama3.2", messages=USER)
        assert error.value.status_code == 503 and error.value.error == BUSY_TEXT
    assert client.chat("llama3.2", messages=USER).done


def test_error_mid_stream_raises_response_error_with_status_minus_one(fake_ollama):
    """An error line after the first chunk surfaces as ResponseError with status_code -1."""
    fake_ollama.error_mid_stream = "runner crashed"
    stream = _client(fake_ollama).chat("llama3.2", messages=USER, stream=True)
    first = next(stream)
    assert first.message.content
    with pytest.raises(ollama.ResponseError) as error:
        list(stream)
    assert error.value.status_code == -1 and error.value.error == "runner crashed"


def test_empty_messages_load_and_keep_alive_zero_unloads(fake_ollama):
    """An empty chat loads the model (done_reason load); keep_alive 0 unloads it."""
    client = _client(fake_ollama)
    loaded = client.chat("llama3.2", messages=[], keep_alive="10m")
    assert loaded.done and loaded.done_reason == "load"
    unloaded = client.chat("llama3.2", messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert client.ps().models == []
    assert client.generate("llama3.2", "").done_reason == "load"


def test_bare_number_keep_alive_is_a_400_duration_error(fake_ollama):
    """keep_alive "10" fails Go's duration parsing, as in Ollama."""
    with pytest.raises(ollama.ResponseError) as error:
        _client(fake_ollama).chat("llama3.2", messages=USER, keep_alive="10")
    assert error.value.status_code == 400
    assert error.value.error == 'time: missing unit in duration "10"'


def test_invalid_base64_image_is_400_with_the_byte_offset(fake_ollama):
    """data: URIs and URLs fail strict base64 decoding at bytes 4 and 5."""
    for image, offset in (("data:image/png;base64,AAAA", 4), ("https://x/y.png", 5)):
        body = {"model": "gemma3:4b", "messages": [{**USER[0], "images": [image]}], "stream": False}
        response = httpx.post(f"{fake_ollama.url}/api/chat", json=body)
        assert response.status_code == 400
        assert response.json() == {"error": f"illegal base64 data at input byte {offset}"}


def test_go_base64_decoder_matches_go_on_padding_and_newlines():
    """Padding is required, CR/LF are skipped, and errors name Go's byte offset."""
    data = _png()
    encoded = base64.b64encode(data).decode()
    assert go_b64decode(encoded[:20] + "\r\n" + encoded[20:]) == data
    assert go_b64decode("QQ==") == b"A"
    for bad, offset in (("QQ", 0), ("QQ=", 3), ("Q===", 1), ("QQ==QQ==", 4), ("QUJD!", 4)):
        with pytest.raises(RequestProblem, match=f"at input byte {offset}$"):
            go_b64decode(bad)


def test_images_reach_a_vision_model_and_break_gemma3_1b(fake_ollama):
    """gemma3:4b takes an image; gemma3:1b answers 500 `vision model not found`."""
    client = _client(fake_ollama)
    message = {**USER[0], "images": [_png()]}
    assert client.chat("gemma3:4b", messages=[message]).done
    with pytest.raises(ollama.ResponseError) as error:
        client.chat("gemma3:1b", messages=[message])
    assert error.value.status_code == 500 and "vision model not found" in error.value.error
    sent = fake_ollama.requests[-1].images()
    assert base64.b64decode(sent[0]) == _png()


def test_text_model_ignores_images_and_answers_200(fake_ollama):
    """A text-only model (llama3.2) drops images silently and still answers."""
    reply = _client(fake_ollama).chat("llama3.2", messages=[{**USER[0], "images": [_png()]}])
    assert reply.done and "image" in (reply.message.content or "")


def test_think_true_on_a_model_without_thinking_is_400(fake_ollama):
    """Asking a non-thinking model to think is refused; think=False is accepted."""
    client = _client(fake_ollama)
    with pytest.raises(ollama.ResponseError) as error:
        client.chat("llama3.2", messages=USER, think=True)
    assert error.value.status_code == 400 and "does not support thinking" in error.value.error
    assert client.chat("llama3.2", messages=USER, think=False).done


def test_unknown_path_and_wrong_method_use_gin_plain_text(fake_ollama):
    """Unknown paths give `404 page not found`, wrong methods `405 method not allowed`."""
    missing = httpx.get(f"{fake_ollama.url}/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert missing.headers["content-type"] == "text/plain"
    wrong = httpx.get(f"{fake_ollama.url}/api/chat")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")


def test_malformed_and_empty_bodies_are_400(fake_ollama):
    """An empty body and broken JSON are refused with Go's messages."""
    empty = httpx.post(f"{fake_ollama.url}/api/chat", content=b"")
    assert empty.json() == {"error": "missing request body"}
    broken = httpx.post(f"{fake_ollama.url}/api/chat", content=b"xyz")
    assert broken.status_code == 400
    assert broken.json()["error"] == "invalid character 'x' looking for beginning of value"


def test_down_refuses_connections_and_up_serves_on_the_same_port(fake_ollama):
    """While down the client cannot connect, even on a kept-alive connection; up() restores it."""
    client = _client(fake_ollama)
    assert client.list().models
    port = fake_ollama.port
    fake_ollama.down()
    with pytest.raises(ConnectionError):
        client.list()
    fake_ollama.up()
    assert fake_ollama.port == port
    assert client.list().models


def test_delay_makes_a_short_read_timeout_fire(fake_ollama):
    """A delay longer than the client's read timeout raises httpx.ReadTimeout."""
    fake_ollama.delay_s = 2.0
    with pytest.raises(httpx.ReadTimeout):
        _client(fake_ollama, timeout=0.2).chat("llama3.2", messages=USER)


def test_drop_count_closes_the_connection_without_an_answer(fake_ollama):
    """A dropped request surfaces as httpx.RemoteProtocolError; the next one works."""
    fake_ollama.drop_count = 1
    client = _client(fake_ollama)
    with pytest.raises(httpx.RemoteProtocolError):
        client.chat("llama3.2", messages=USER)
    assert client.chat("llama3.2", messages=USER).done


def test_scripted_replies_come_before_the_override_and_truncate_cuts_them(fake_ollama):
    """`replies` are used in order, then `reply_override`; `truncate` cuts the next answer."""
    fake_ollama.replies.extend(["first answer", "second answer"])
    fake_ollama.reply_override = "always this"
    client = _client(fake_ollama)
    texts = [client.chat("llama3.2", messages=USER).message.content for _ in range(3)]
    assert texts == ["first answer", "second answer", "always this"]
    fake_ollama.truncate = 1
    cut = client.chat("llama3.2", messages=USER)
    assert (cut.message.content, cut.done_reason) == ("always this"[:5], "length")


def test_every_request_is_recorded_with_its_body(fake_ollama):
    """Requests are recorded in order with path and parsed body, failures included."""
    client = _client(fake_ollama)
    client.show("gemma3:4b")
    with pytest.raises(ollama.ResponseError):
        client.chat("nope", messages=USER)
    assert [(r.method, r.path) for r in fake_ollama.requests] == [
        ("POST", "/api/show"),
        ("POST", "/api/chat"),
    ]
    assert fake_ollama.bodies()[0]["model"] == "nope"


def test_requests_in_parallel_are_all_answered(fake_ollama):
    """The threading server answers concurrent clients."""
    results: list[bool] = []

    def ask() -> None:
        results.append(bool(_client(fake_ollama).chat("llama3.2", messages=USER).done))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == [True] * 6


def test_configured_models_replace_the_defaults():
    """A server built with its own models lists only those, with their capabilities."""
    with FakeOllama({"qwen3-vl:8b": ("completion", "vision", "thinking")}) as server:
        client = _client(server)
        assert [m.model for m in client.list().models] == ["qwen3-vl:8b"]
        reply = client.chat("qwen3-vl:8b", messages=USER)
        assert reply.message.thinking
    with pytest.raises(ConnectionError):
        client.list()


def test_keep_alive_parsing_follows_go_durations():
    """Numbers are seconds, negatives mean forever, strings need a unit (except "0")."""
    assert keep_alive_seconds(None) == 300.0
    assert keep_alive_seconds(90) == 90.0
    assert keep_alive_seconds(-1) == float("inf")
    assert keep_alive_seconds("1h30m") == 5400.0
    assert keep_alive_seconds("0") == 0.0
    with pytest.raises(RequestProblem, match="invalid duration"):
        keep_alive_seconds("soon")


def test_instance_from_schema_fills_required_fields_from_words():
    """The schema filler uses the given words and honours enum, arrays and minLength."""
    schema = {
        "type": "object",
        "properties": {
            "caption": {"type": "string", "minLength": 30},
            "mood": {"enum": ["calm", "tense"]},
            "colors": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["caption", "mood", "colors"],
    }
    value = instance_from_schema(schema, ["red", "blue", "green"])
    jsonschema.validate(value, schema)
    assert value["mood"] == "calm" and set(value["colors"]) <= {"red", "blue", "green"}
