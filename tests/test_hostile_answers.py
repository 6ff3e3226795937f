"""What a misbehaving Ollama sends is bounded and cleaned: size, time, schema, hostile text."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from daemon.clean import clean_text
from daemon.config import OllamaSettings, RuleSettings
from daemon.errors import OutputError, TransientError
from daemon.pipeline.compose.client import OllamaLLM, answer_cap, chunk_cap
from daemon.pipeline.compose.modes import Composer
from daemon.pipeline.compose.schemas import SpeedOutput, answer_tokens, format_schema
from daemon.records import Scored
from tests.daemon_helpers import wait_until
from tests.fake_ollama import FakeOllama
from tests.images import scene

ANALYSIS = {"subjects": (Scored("lighthouse", 0.8),), "style": (Scored("oil painting", 0.6),)}
STATS = "bright landscape image dominated by white"
MESSAGES = [{"role": "user", "content": "a lighthouse (0.8)"}]


def settings_for(server: FakeOllama, **overrides: Any) -> OllamaSettings:
    """Settings pointing at the fake server, no retries for transient errors."""
    values: dict[str, Any] = {"host": server.url, "retries": 0, "backoff_s": 0.0, **overrides}
    return OllamaSettings(**values)


def compose(server: FakeOllama, mode: str = "speed", **overrides: Any):
    """One composition through a real OllamaLLM talking to the fake server."""
    settings = settings_for(server, **overrides)
    composer = Composer(settings, OllamaLLM(settings), sleep=lambda _: None)
    image = scene((64, 48)) if mode == "vision" else None
    return composer.compose(mode, RuleSettings(language="Spanish"), ANALYSIS, STATS, image)


def strings_in(value: Any) -> list[str]:
    """Every string inside a nested structure."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in strings_in(item)]
    return []


def chat(llm: OllamaLLM, num_predict: int = 100) -> Any:
    """One speed-schema chat turn."""
    schema = format_schema(SpeedOutput)
    return llm.chat_json(
        "llama3.2:latest", MESSAGES, schema, num_predict=num_predict, temperature=0
    )


# --- size ----------------------------------------------------------------------------------


def test_answer_cap_follows_num_predict_up_to_the_ceiling():
    """About 16 bytes a token, never above max_answer_bytes."""
    assert answer_cap(400, 262_144) == 16 * 400 + 1024
    assert answer_cap(100_000, 262_144) == 262_144


def test_chat_json_many_tiny_chunks_stop_at_the_chunk_cap(fake_ollama):
    """One-word chunks far past num_predict: the server ignores it; stopped by chunk count."""
    fake_ollama.huge_answer_bytes = 64 * 1024
    llm = OllamaLLM(settings_for(fake_ollama, max_answer_bytes=1024 * 1024))
    with pytest.raises(OutputError, match=f"ran past {chunk_cap(100):,} chunks"):
        chat(llm, num_predict=100)


def test_chat_json_endless_answer_stops_at_the_cap_and_closes_the_stream(fake_ollama):
    """A stream that never ends is cut at the cap: OutputError, and the server stops sending."""
    fake_ollama.endless = True
    with pytest.raises(OutputError, match="ran past 2,624 bytes"):
        chat(OllamaLLM(settings_for(fake_ollama)))

    def settled() -> bool:
        before = fake_ollama.streamed_bytes
        time.sleep(0.3)
        return fake_ollama.streamed_bytes == before

    wait_until(settled, 10, "the fake server to stop streaming")


def test_chat_json_huge_single_line_is_refused_by_the_response_limit(fake_ollama):
    """One 12 MB NDJSON line (nothing to stream by) is stopped at the response's byte limit."""
    fake_ollama.huge_answer_bytes = 12 * 1024 * 1024
    fake_ollama.one_line = True
    llm = OllamaLLM(settings_for(fake_ollama, max_answer_bytes=64 * 1024))
    with pytest.raises(OutputError, match=r"the response ran past 2,097,152 bytes"):
        chat(llm)


def test_composer_200_kb_answer_is_cut_off_twice_then_falls_back(fake_ollama):
    """A model that ignores num_predict: read to the cap, retried with twice the budget,
    then the CLIP template with the reason; the server sent only about the caps."""
    fake_ollama.huge_answer_bytes = 200 * 1024
    result = compose(fake_ollama)
    assert result.mode == "clip" and result.attempts == 2
    assert "ran past" in (result.degraded_reason or "")
    budgets = [body["options"]["num_predict"] for body in fake_ollama.bodies()]
    first = answer_tokens(format_schema(SpeedOutput))  # sized to the schema, under 400
    assert budgets == [first, 2 * first]
    assert fake_ollama.streamed_bytes < 200 * 1024


# --- time ----------------------------------------------------------------------------------


def test_chat_json_trickling_answer_is_stopped_at_the_deadline(fake_ollama):
    """Each line in time but the whole too slow: stopped after connect_s + read_s."""
    fake_ollama.endless = True
    fake_ollama.trickle_s = 0.2
    llm = OllamaLLM(settings_for(fake_ollama, timeout={"connect_s": 0.5, "read_s": 1.0}))
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"no answer within 1 s"):
        chat(llm, num_predict=100_000)
    assert time.monotonic() - started < 20  # a loose sanity bound, not a timing goal


# --- shape and content -----------------------------------------------------------------


def test_composer_schema_ignoring_json_degrades_and_is_never_the_prompt(fake_ollama):
    """Valid JSON that ignores the schema is unusable output: retried once, then the template."""
    fake_ollama.ignore_schema = True
    result = compose(fake_ollama)
    assert result.mode == "clip" and result.attempts == 2
    assert "does not fit the schema" in (result.degraded_reason or "")


@pytest.mark.parametrize("mode", ["speed", "quality", "vision"])
def test_composer_hostile_text_comes_out_clean_in_every_field(fake_ollama, mode):
    """Escape sequences, controls, bidi, zero-width, think blocks and fences: all gone."""
    fake_ollama.hostile_text = True
    result = compose(fake_ollama, mode)
    assert result.mode == mode and result.degraded_reason is None
    texts = [result.prompt, result.negative_prompt, *strings_in(result.context)]
    for text in texts:
        assert clean_text(text) == text
        assert "[31m" not in text and "<think>" not in text and "```" not in text
        assert "hidden reasoning" not in text
    assert result.prompt.startswith("lighthouse")


def test_composer_answer_with_lone_surrogates_is_cleaned_not_crashed(fake_ollama):
    """A lone surrogate in the streamed text cannot be written: it never gets out."""
    fake_ollama.reply_override = '{"prompt": "a \ud800 fox, \udcff snow", "negative_prompt": ""}'
    result = compose(fake_ollama)
    assert result.mode == "speed"
    result.prompt.encode("utf-8")
    assert "fox" in result.prompt and "snow" in result.prompt


def test_composer_answer_spelling_a_lone_surrogate_escape_degrades(fake_ollama):
    """JSON inside the answer spelling \\ud800 is invalid JSON to pydantic: the fallback."""
    fake_ollama.reply_override = '{"prompt": "a \\ud800 fox", "negative_prompt": ""}'
    result = compose(fake_ollama)
    assert result.mode == "clip" and "Invalid JSON" in (result.degraded_reason or "")


def test_composer_answer_all_control_characters_is_empty_and_falls_back(fake_ollama):
    """A prompt made only of controls and invisible characters cleans to nothing: fallback."""
    prompt = "\x1b[31m\x00\x07\u200b\u202e\ufeff\x1b[0m"
    fake_ollama.reply_override = json.dumps({"prompt": prompt, "negative_prompt": ""})
    result = compose(fake_ollama)
    assert result.mode == "clip"
    assert "empty once cleaned" in (result.degraded_reason or "")
