"""The fake Ollama's cost model: loads on a switch, a prompt cache per slot, slots, exact counts."""

from __future__ import annotations

import base64
import threading
import time

import httpx
import ollama
import pytest

from tests.fake_cost import (
    CPU,
    GPU_4GB,
    CostModel,
    Hardware,
    limit,
    output_tokens,
    prompt_tokens,
    text_tokens,
)
from tests.fake_ollama import FakeOllama

FIELDS = (
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
    "total_duration",
)
SMALL = Hardware("test", load_s=2.0, prefill_tok_s=100.0, decode_tok_s=10.0, image_tokens=5)


def _tokens(*words: str) -> list[str]:
    return [*words, "<|assistant|>"]


def test_tokens_are_word_runs_and_punctuation_with_roles_and_images_in_place():
    """The rendered chat: role token, the message's images first, its text pieces, an end."""
    assert text_tokens("a red-roof, 3 cats!") == ["a", "red", "-", "roof", ",", "3", "cats", "!"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    tokens = prompt_tokens(messages, {1: [b"one"]}, image_tokens=3)
    assert tokens[:5] == ["<|system|>", "Be", "brief", ".", "<|end|>"]
    assert tokens[5] == "<|user|>" and all(t.startswith("<img:") for t in tokens[6:9])
    assert tokens[9:] == ["hi", "<|end|>", "<|assistant|>"]
    other = prompt_tokens(messages, {1: [b"two"]}, image_tokens=3)
    assert other[:6] == tokens[:6] and other[6] != tokens[6]  # another image never matches
    assert output_tokens("") == 1 and output_tokens('{"a": 1}') == 7


def test_a_switch_costs_a_load_and_loses_the_prompt_cache():
    """A, A, B, A: three loads, and A's cache is gone after B was loaded."""
    cost = CostModel(SMALL, speed=0)
    prompt = _tokens(*["the", "same", "static", "rules", "here"])
    charges = [cost.run(m, prompt, 4) for m in ("a", "a", "b", "a")]
    assert cost.loads == 3
    assert [c.load_s for c in charges] == [2.0, 0.0, 2.0, 2.0]
    assert [c.cached_tokens for c in charges] == [0, len(prompt) - 1, 0, 0]
    assert charges[1].fields()["load_duration"] == 4_000_000  # resident: a few ms
    assert charges[0].fields()["load_duration"] == 2_000_000_000


def test_a_shared_prefix_is_free_and_only_the_rest_is_prefilled():
    """The common prefix with the slot's last prompt is reused; the tail costs prefill time."""
    cost = CostModel(SMALL, speed=0)
    static = [f"rule{i}" for i in range(50)]
    first = cost.run("a", _tokens(*static, "cat"), 10)
    second = cost.run("a", _tokens(*static, "dog", "bark"), 10)
    repeat = cost.run("a", _tokens(*static, "dog", "bark"), 10)
    assert (first.cached_tokens, first.prefilled) == (0, 52)
    assert (second.cached_tokens, second.prefilled) == (50, 3)
    assert repeat.prefilled == 1  # an identical prompt still evaluates one token
    assert second.same_model_prefix == 50 and repeat.same_model_prefix == len(static) + 3
    assert second.prefill_s == pytest.approx(3 / 100)
    assert second.decode_s == pytest.approx(10 / 10)
    totals = cost.totals()
    assert (totals["loads"], totals["prefilled"], totals["decoded"]) == (1, 56, 30)
    assert totals["model_s"] == pytest.approx(2.0 + 56 / 100 + 30 / 10)


def test_with_two_slots_two_prompt_families_each_keep_their_cache():
    """Interleaved families overwrite one slot's cache, but each finds its own of two slots."""
    one, two = CostModel(SMALL, speed=0), CostModel(SMALL, slots=2, speed=0)
    family = [_tokens(*[f"{name}{i}" for i in range(20)], "x") for name in ("p", "q")]
    for _ in range(3):
        for tokens in family:
            one.run("a", tokens, 1)
            two.run("a", tokens, 1)
    assert one.totals()["prefilled"] == 6 * 22
    assert two.totals()["prefilled"] == 2 * 22 + 4 * 1


def _intervals(cost: CostModel, jobs: list[tuple[str, list[str]]]) -> list[tuple[float, float]]:
    threads = [threading.Thread(target=cost.run, args=(m, t, 5)) for m, t in jobs]
    for thread in threads:
        thread.start()
        time.sleep(0.01)  # arrival order
    for thread in threads:
        thread.join(10)
    return [(c.started, c.ended) for c in cost.charges]


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_requests_beyond_the_slots_wait_and_the_fake_really_sleeps():
    """Three requests on two slots: never more than two at once; the times are slept."""
    cost = CostModel(SMALL, slots=2, speed=0.05)  # a 2 s load sleeps 0.1 s, 5 tokens 25 ms
    started = time.monotonic()
    intervals = _intervals(cost, [("a", _tokens(str(i))) for i in range(3)])
    assert len(intervals) == 3
    assert _most_at_once(intervals) == 2
    assert time.monotonic() - started >= 0.1 + 2 * 0.025
    assert max(c.queued_s for c in cost.charges) > 0.2  # the third waited for a slot


def test_a_switch_waits_for_the_requests_in_flight_and_blocks_those_behind_it():
    """A, then B, then A again: B's load waits for A to finish; the last A waits for B (FIFO)."""
    cost = CostModel(SMALL, slots=2, speed=0.05)
    _intervals(cost, [("a", _tokens("1")), ("b", _tokens("2")), ("a", _tokens("3"))])
    by_model = [c.model for c in sorted(cost.charges, key=lambda c: c.started)]
    assert by_model == ["a", "b", "a"] and cost.loads == 3
    ordered = sorted(cost.charges, key=lambda c: c.started)
    assert ordered[0].ended <= ordered[1].started and ordered[1].ended <= ordered[2].started


def test_limit_counts_one_load_per_model_and_perfect_prefix_reuse():
    """The limit: a load per distinct model, each prompt less the prefix it shares with the
    previous one for that model (or, with reuse="any", with the best earlier one)."""
    static = [f"s{i}" for i in range(30)]
    requests = [
        ("a", _tokens(*static, "1"), 7),
        ("b", _tokens("other", "2"), 3),
        ("a", _tokens(*static, "2"), 7),
        ("a", _tokens(*static[:10], "z"), 7),
    ]
    bound = limit(requests, SMALL)
    assert bound["loads"] == 2
    assert bound["prefilled"] == 32 + 3 + 2 + 2
    assert bound["decoded"] == 24
    assert bound["model_s"] == pytest.approx(2 * 2.0 + 39 / 100 + 24 / 10)
    requests.append(("a", _tokens(*static, "3"), 7))  # its best match is two prompts back
    assert limit(requests, SMALL)["prefilled"] == 39 + 22  # shares 10 with the one before
    assert limit(requests, SMALL, reuse="any")["prefilled"] == 39 + 2


def test_presets_follow_the_reference_figures():
    """4 GB GPU: tens of tok/s decode, pp an order faster, loads of seconds; CPU far slower."""
    assert 35 <= GPU_4GB.decode_tok_s <= 50 and GPU_4GB.prefill_tok_s >= 10 * GPU_4GB.decode_tok_s
    assert 3 <= GPU_4GB.load_s <= 7
    assert 5 <= CPU.decode_tok_s <= 9 and CPU.prefill_tok_s <= 3 * CPU.decode_tok_s


def test_the_server_reports_the_cost_models_exact_counts():
    """Through HTTP: prompt_eval_count, eval_count and load_duration are the model's own."""
    cost = CostModel(SMALL, speed=0)
    messages = [
        {"role": "system", "content": "Describe the image."},
        {"role": "user", "content": "subjects: lighthouse (0.91)"},
    ]
    with FakeOllama(cost=cost) as server:
        client = ollama.Client(host=server.url, timeout=10)
        first = list(client.chat("llama3.2", messages=messages, stream=True))
        second = client.chat("llama3.2", messages=messages, stream=False)
        third = client.chat("mistral", messages=messages, stream=False)
        ps = [m.model for m in client.ps().models]
    final = first[-1]
    text = "".join(p.message.content or "" for p in first)
    expected = prompt_tokens(messages, {}, SMALL.image_tokens)
    assert final.prompt_eval_count == len(expected) == cost.charges[0].prompt_tokens
    assert final.eval_count == output_tokens(text)
    assert final.load_duration == 2_000_000_000 and second.load_duration == 4_000_000
    assert third.load_duration == 2_000_000_000 and cost.loads == 2
    assert second.prompt_eval_duration == round(1 / SMALL.prefill_tok_s * 1e9)  # one token
    assert final.eval_duration == round(final.eval_count / SMALL.decode_tok_s * 1e9)
    assert ps == ["mistral:latest"]


def test_a_streamed_answer_arrives_at_the_decode_pace_and_a_dropped_stream_frees_its_slot():
    """As the real server streams: the first piece after the prefill, the rest spread over the
    decode time; a client that stops reading mid-answer frees the slot and is not charged."""
    cost = CostModel(SMALL, speed=0.2)  # prefill 0.1 s/10 tokens, decode 0.02 s a token
    messages = [{"role": "user", "content": "subjects: lighthouse (0.91), seascape (0.05)"}]
    with FakeOllama(cost=cost) as server:
        client = ollama.Client(host=server.url, timeout=10)
        client.chat("llama3.2", messages=[])  # load first: the load is not the point here
        started = time.monotonic()
        arrivals = [
            time.monotonic() - started
            for _ in client.chat("llama3.2", messages=messages, stream=True)
        ]
        charge = cost.charges[-1]
        with httpx.stream(
            "POST", f"{server.url}/api/chat", json={"model": "llama3.2", "messages": messages}
        ) as response:
            next(response.iter_lines())  # one piece, then hang up
        again = client.chat("llama3.2", messages=messages, stream=False)  # a free slot
    decode_wall = charge.decode_s * cost.speed
    assert charge.decoded > 3 and len(arrivals) >= 4
    assert arrivals[0] < arrivals[-1] - decode_wall / 2  # pieces spread, not all at the end
    assert arrivals[-1] >= (charge.prefill_s + charge.decode_s) * cost.speed * 0.9
    assert again.done and len(cost.charges) == 2  # the dropped stream is not charged


def test_images_count_as_tokens_and_a_preload_is_a_load():
    """A vision request's images add image_tokens each; an empty chat loads the model."""
    cost = CostModel(SMALL, speed=0)
    image = base64.b64encode(b"\x89PNG fake bytes").decode()
    with FakeOllama(cost=cost) as server:
        loaded = httpx.post(f"{server.url}/api/chat", json={"model": "gemma3:4b", "messages": []})
        body = {
            "model": "gemma3:4b",
            "stream": False,
            "messages": [{"role": "user", "content": "what is it", "images": [image]}],
        }
        answer = httpx.post(f"{server.url}/api/chat", json=body).json()
    assert loaded.json()["load_duration"] == 2_000_000_000 and cost.loads == 1
    assert answer["prompt_eval_count"] == 1 + 5 + 3 + 1 + 1
    assert answer["load_duration"] == 4_000_000


@pytest.mark.parametrize("stream", [True, False])
def test_without_a_cost_model_every_answer_carries_the_timing_fields(fake_ollama, stream):
    """Small realistic values: warm load of a few ms, durations consistent with the total."""
    body = {"model": "llama3.2", "stream": stream, "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(f"{fake_ollama.url}/api/chat", json=body)
    final = (
        response.json()
        if not stream
        else httpx.Response(200, text=response.text.splitlines()[-1]).json()
    )
    assert all(isinstance(final[key], int) and final[key] > 0 for key in FIELDS)
    assert final["load_duration"] < 500_000_000  # not a model load
    parts = final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    assert final["total_duration"] >= parts
