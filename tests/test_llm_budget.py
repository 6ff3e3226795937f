"""The LLM stage's own time: static prompt prefix, bounded answers, constant runner options,
and Ollama's counts and times carried into records, `promptd status` and the summary."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ollama
import pytest

from daemon.cli.process import summarize
from daemon.config import OllamaSettings, RuleSettings
from daemon.pipeline.compose.client import LLMReply, OllamaLLM, reply_from
from daemon.pipeline.compose.modes import Composer, request_tokens
from daemon.pipeline.compose.prompts import TOKEN_TARGET, build_messages
from daemon.pipeline.compose.schemas import (
    CHARS_PER_BOUND_TOKEN,
    FIELD_TOKENS,
    LIST_BOUNDS,
    QualityOutput,
    SpeedOutput,
    VisionOutput,
    answer_tokens,
    format_schema,
    parse_output,
)
from daemon.records import Result, Scored
from daemon.service.llmtime import LOAD_MS, LLMTime, total
from daemon.service.state import ServiceState, format_status, state_from_json, state_to_json
from daemon.service.tally import Tally
from tests.fake_ollama import FakeOllama

OUTPUTS = {"speed": SpeedOutput, "quality": QualityOutput, "vision": VisionOutput}
LIGHTHOUSE = {
    "subjects": (Scored("lighthouse", 0.80), Scored("seascape", 0.15)),
    "style": (Scored("oil painting", 0.62), Scored("watercolor", 0.21)),
    "mood": (Scored("calm", 0.55),),
}
CAT = {
    "subjects": (Scored("cat", 0.70), Scored("sofa", 0.20), Scored("lamp", 0.10)),
    "style": (Scored("photograph", 0.81),),
    "color_palette": (Scored("warm tones", 0.66),),
}
STATS_A = "bright, muted landscape image (16:9) dominated by white and gray"
STATS_B = "dark portrait image (3:4) dominated by orange and brown"
HINT = "all photos show the Acme Runner shoe"
TIMINGS = {
    "llm_load_ms": 6340.0,
    "llm_prompt_tokens": 400.0,
    "llm_prompt_ms": 500.0,
    "llm_output_tokens": 120.0,
    "llm_output_ms": 3000.0,
}


# --- prefix-friendly messages


def common_prefix(a: str, b: str) -> str:
    """The longest text both start with."""
    size = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        size += 1
    return a[:size]


@pytest.mark.parametrize("mode", ["speed", "quality", "vision"])
def test_static_part_is_byte_identical_from_one_image_to_the_next(mode: str) -> None:
    """Two images with other analyses and stats: the same system message, and the user
    messages share their opening; the image's evidence comes after, the hint last."""
    schema = format_schema(OUTPUTS[mode])
    first = build_messages(mode, LIGHTHOUSE, STATS_A, "Spanish", schema, HINT)
    second = build_messages(mode, CAT, STATS_B, "Spanish", schema, HINT)
    assert [m["role"] for m in first] == ["system", "user"]
    assert first[0]["content"] == second[0]["content"]
    a, b = first[1]["content"], second[1]["content"]
    shared = common_prefix(a, b)
    assert shared and "lighthouse" not in shared and "cat" not in shared
    assert a.index("lighthouse 80%") < a.index(STATS_A) < a.index(HINT)
    assert a.rstrip().endswith("</user_instructions>") and b.rstrip().endswith(
        "</user_instructions>"
    )
    for static in ("Rules for the prompt", "Answer with a JSON", '"negative_prompt"'):
        assert static in first[0]["content"] and static not in a


def test_static_part_is_most_of_a_quality_request() -> None:
    """In quality and vision (the long answers), at least 80 % of the request text is the
    prefix it shares with the previous image's request."""
    for mode in ("quality", "vision"):
        schema = format_schema(OUTPUTS[mode])
        first = "".join(
            m["content"] for m in build_messages(mode, LIGHTHOUSE, STATS_A, "French", schema)
        )
        second = "".join(m["content"] for m in build_messages(mode, CAT, STATS_B, "French", schema))
        assert len(common_prefix(first, second)) >= 0.8 * len(second), mode


def test_system_message_depends_on_mode_and_language_only() -> None:
    """The language rule is part of the static part: another language, another prefix."""
    schema = format_schema(QualityOutput)
    spanish = build_messages("quality", CAT, STATS_B, "Spanish", schema)[0]["content"]
    german = build_messages("quality", CAT, STATS_B, "German", schema)[0]["content"]
    assert spanish != german and "German" in german and "Spanish" not in german
    speed = build_messages("speed", CAT, STATS_B, "German", format_schema(SpeedOutput))
    assert "German" not in speed[0]["content"]  # speed answers in English whatever the rule


# --- bounded answers


def _strings_and_lists(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return list(schema["properties"].items())


@pytest.mark.parametrize("mode", ["speed", "quality", "vision"])
def test_every_string_and_list_of_a_format_schema_is_bounded(mode: str) -> None:
    """maxLength on every string (list items too), maxItems on every list; five characters
    per target token."""
    schema = format_schema(OUTPUTS[mode])
    for name, spec in _strings_and_lists(schema):
        if spec["type"] == "array":
            most, per_item = LIST_BOUNDS[name]
            assert spec["maxItems"] == most
            assert spec["items"] == {
                "type": "string",
                "maxLength": CHARS_PER_BOUND_TOKEN * per_item,
            }
        else:
            assert spec["type"] == "string"
            assert spec["maxLength"] == CHARS_PER_BOUND_TOKEN * FIELD_TOKENS[name]


def test_prompt_bounds_follow_the_token_targets() -> None:
    """The prompts' bounds are the seed's targets (~150 speed, ~300 quality and vision)."""
    assert TOKEN_TARGET == {"speed": 150, "quality": 300, "vision": 300}
    speed = format_schema(SpeedOutput)["properties"]["prompt"]
    quality = format_schema(QualityOutput)["properties"]["generative_prompt"]
    assert (speed["maxLength"], quality["maxLength"]) == (750, 1500)


def test_num_predict_is_sized_to_the_schema_and_capped_by_the_setting() -> None:
    """Bounds at 4 characters a token plus the JSON around them, never over the setting."""
    speed, quality = format_schema(SpeedOutput), format_schema(QualityOutput)
    # speed: 8 (object) + prompt 750/4 -> 188 + 8, negative 250/4 -> 63 + 8
    assert answer_tokens(speed) == 8 + (188 + 8) + (63 + 8)
    defaults = OllamaSettings()
    assert request_tokens(defaults, "speed", speed) == answer_tokens(speed) < 400
    assert request_tokens(defaults, "quality", quality) == answer_tokens(quality) <= 1200
    tight = OllamaSettings(num_predict={"speed": 100, "quality": 100, "vision": 100})
    assert request_tokens(tight, "speed", speed) == 100
    unbounded = {"properties": {"prompt": {"type": "string"}}}
    assert answer_tokens(unbounded) is None
    assert request_tokens(defaults, "speed", unbounded) == 400


def test_an_answer_past_the_bounds_still_validates() -> None:
    """pydantic does not enforce the grammar's bounds: an over-long answer is used as before."""
    long_prompt = ", ".join(["a lighthouse on a cliff at dusk"] * 60)
    answer = json.dumps({"prompt": long_prompt, "negative_prompt": "blurry"})
    assert len(long_prompt) > format_schema(SpeedOutput)["properties"]["prompt"]["maxLength"]
    assert parse_output(SpeedOutput, answer).prompt == long_prompt


def test_quality_request_carries_the_bounded_schema_and_its_num_predict(
    fake_ollama: FakeOllama,
) -> None:
    """The request carries the bounded schema and the num_predict sized to it; the fake
    (which honours maxLength as the grammar would) answers within the bounds."""
    settings = OllamaSettings(host=fake_ollama.url, retries=0)
    composer = Composer(settings, OllamaLLM(settings), sleep=lambda s: None)
    result = composer.compose("quality", RuleSettings(), LIGHTHOUSE, STATS_A, None)
    assert result.mode == "quality"
    (body,) = fake_ollama.bodies()
    schema = format_schema(QualityOutput)
    assert body["format"] == schema and body["options"]["num_predict"] == answer_tokens(schema)
    assert result.context is not None
    assert (
        len(result.context["brief_caption"]) <= schema["properties"]["brief_caption"]["maxLength"]
    )


# --- runner options


def test_runner_options_are_the_same_for_every_request_to_a_model(fake_ollama: FakeOllama) -> None:
    """Two modes on one model, and the preload: identical options apart from num_predict and
    temperature (sampling options, which never make Ollama reload)."""
    for num_ctx in (None, 8192):
        settings = OllamaSettings(
            host=fake_ollama.url,
            num_ctx=num_ctx,
            models={"speed": "llama3.2:latest", "quality": "llama3.2:latest"},
            temperature={"speed": 0.5, "quality": 0.2, "vision": 0.2},
        )
        llm = OllamaLLM(settings)
        composer = Composer(settings, llm, sleep=lambda s: None)
        llm.preload("llama3.2:latest")
        for mode in ("speed", "quality", "speed"):
            composer.compose(mode, RuleSettings(), LIGHTHOUSE, STATS_A, None)
        bodies = fake_ollama.bodies()[-4:]
        assert {b["model"] for b in bodies} == {"llama3.2:latest"}
        loads = [
            {
                k: v
                for k, v in (b.get("options") or {}).items()
                if k not in ("num_predict", "temperature")
            }
            for b in bodies
        ]
        assert loads == [loads[0]] * 4
        assert loads[0] == ({} if num_ctx is None else {"num_ctx": num_ctx})
        temperatures = [b["options"]["temperature"] for b in bodies[1:]]
        assert temperatures == [0.5, 0.2, 0.5]  # the sampling options do vary


# --- Ollama's timings


def test_reply_reads_ollama_counts_and_times_from_the_final_chunk() -> None:
    """Nanoseconds become milliseconds; counts stay counts; a missing field stays absent."""
    final = ollama.ChatResponse(
        model="m",
        done=True,
        done_reason="stop",
        message=ollama.Message(role="assistant", content=""),
        total_duration=9_000_000_000,
        load_duration=6_340_000_000,
        prompt_eval_count=400,
        prompt_eval_duration=500_000_000,
        eval_count=120,
        eval_duration=3_000_000_000,
    )
    reply = reply_from(final, "{}")
    assert reply.timings() == TIMINGS
    assert reply.total_duration_ms == 9000.0
    partial = reply_from(
        ollama.ChatResponse(
            model="m", done=True, message=ollama.Message(role="assistant"), eval_count=7
        ),
        "{}",
    )
    assert partial.timings() == {"llm_output_tokens": 7.0}


def test_chat_against_the_fake_carries_all_five_timings(fake_ollama: FakeOllama) -> None:
    """The streamed answer's final chunk gives all five, consistent with the answer."""
    llm = OllamaLLM(OllamaSettings(host=fake_ollama.url))
    reply = llm.chat_json(
        "llama3.2:latest",
        [{"role": "user", "content": "a barn (0.9)"}],
        format_schema(SpeedOutput),
        num_predict=300,
        temperature=0,
    )
    timings = reply.timings()
    assert set(timings) == set(TIMINGS)
    assert all(value >= 0 for value in timings.values())
    assert timings["llm_output_tokens"] == reply.eval_count and reply.eval_count > 0


class _Answers:
    """An LLM that answers a script of replies (each with timings)."""

    def __init__(self, *replies: LLMReply) -> None:
        self.replies = list(replies)

    def chat_json(self, model, messages, schema, *, num_predict, temperature, images=None):
        """The next scripted reply."""
        return self.replies.pop(0)

    def capabilities(self, model: str) -> frozenset[str]:
        """A text model."""
        return frozenset({"completion"})


def _timed(text: str, reason: str = "stop", load_ms: float = 5.0) -> LLMReply:
    return LLMReply(text, reason, 120, 4000.0, load_ms, 400, 500.0, 3000.0)


def test_a_retry_sums_the_timings_of_every_answered_attempt() -> None:
    """A cut-off answer then a good one: the composition carries both attempts' sums."""
    good = json.dumps({"prompt": "a fox in snow", "negative_prompt": ""})
    llm = _Answers(_timed("{", "length", load_ms=6000.0), _timed(good))
    result = Composer(OllamaSettings(), llm).compose("speed", RuleSettings(), CAT, STATS_B, None)
    assert result.mode == "speed" and result.attempts == 2
    assert result.llm_timings == {
        "llm_load_ms": 6005.0,
        "llm_prompt_tokens": 800.0,
        "llm_prompt_ms": 1000.0,
        "llm_output_tokens": 240.0,
        "llm_output_ms": 6000.0,
    }


def test_a_fallback_still_records_the_time_the_model_spent() -> None:
    """Two unusable answers end in the template, with what they cost recorded."""
    llm = _Answers(_timed("nonsense"), _timed("still nonsense"))
    result = Composer(OllamaSettings(), llm).compose("speed", RuleSettings(), CAT, STATS_B, None)
    assert result.mode == "clip" and result.llm_timings["llm_output_tokens"] == 240.0
    template = Composer(OllamaSettings(), None).compose("speed", RuleSettings(), CAT, STATS_B, None)
    assert template.llm_timings == {}


# --- model loads and tokens per second


def test_llm_time_counts_loads_from_half_a_second_and_rates() -> None:
    """A load counts at load_duration >= 0.5 s; rates are tokens over seconds."""
    warm = {**TIMINGS, "llm_load_ms": LOAD_MS - 1}
    sums = total([TIMINGS, warm, {"load": 3.0}, {**TIMINGS, "llm_load_ms": LOAD_MS}])
    assert (sums.answers, sums.loads) == (3, 2)
    assert sums.output_rate == pytest.approx(120 / 3.0)
    assert sums.prompt_rate == pytest.approx(400 / 0.5)
    assert sums.describe() == "2 model loads, output 40.0 tokens/s, prompt 800 tokens/s"
    assert LLMTime().describe() == "no answers yet"
    only_counts = LLMTime().plus({"llm_output_tokens": 5.0})
    assert only_counts.describe() == "0 model loads, output - tokens/s, prompt - tokens/s"


def test_status_file_keeps_the_llm_totals_and_status_shows_them() -> None:
    """The tally's totals survive the status file and appear in `promptd status`."""
    tally = Tally()
    tally.record(Result(Path("/in/a.png"), "ok", timings_ms={"compose": 9.0, **TIMINGS}))
    tally.record(Result(Path("/in/b.png"), "ok", timings_ms={**TIMINGS, "llm_load_ms": 4.0}))
    tally.record(Result(Path("/in/c.png"), "skipped"))
    state = tally.snapshot(queue=0, ollama="up", clip_device="cpu")
    assert (state.llm.answers, state.llm.loads, state.llm.output_tokens) == (2, 1, 240)
    again = state_from_json(state_to_json(state), Path("status.json"))
    assert again.llm == state.llm
    report = format_status(again, now=datetime.now(timezone.utc), alive=True)
    assert "  llm:          1 model load, output 40.0 tokens/s, prompt 800 tokens/s" in report


def test_status_file_with_odd_or_missing_llm_totals_reads_as_zero() -> None:
    """An older or damaged status file still reads; bad numbers become zero."""
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    doc = json.loads(state_to_json(ServiceState(pid=1, started_at=now, updated_at=now)))
    doc["llm"] = {"answers": "7", "loads": -2, "output_tokens": True, "output_ms": float("nan")}
    assert state_from_json(json.dumps(doc).encode(), Path("s")).llm == LLMTime()
    del doc["llm"]
    assert state_from_json(json.dumps(doc).encode(), Path("s")).llm == LLMTime()


def test_process_summary_adds_loads_and_tokens_per_second() -> None:
    """The summary line ends with the LLM's figures when Ollama answered, not otherwise."""
    results = [
        Result(Path("/a.png"), "ok", mode="speed", timings_ms=TIMINGS),
        Result(Path("/b.png"), "ok", mode="speed", timings_ms={**TIMINGS, "llm_load_ms": 3.0}),
    ]
    line = summarize(results, 10.0)
    assert line.startswith("2 images: 2 ok") and "(0.20 images/s)" in line
    assert line.endswith("; LLM: 1 model load, output 40.0 tokens/s, prompt 800 tokens/s")
    clip_only = summarize([Result(Path("/c.png"), "ok", mode="clip")], 1.0)
    assert "LLM" not in clip_only
