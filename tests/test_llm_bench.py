"""The LLM bench's own arithmetic: switches a bound can explain, prefix shares, keys written."""

from __future__ import annotations

import pytest

from bench import llm_bench
from tests.fake_cost import Charge


def _charge(model: str, started: float, tokens: tuple[str, ...] = ("x",)) -> Charge:
    return Charge(model, 0, len(tokens), 0, 1, 0.0, 0.0, 0.0, 0.0, 0, started, started, tokens)


def test_only_switches_away_from_waiting_work_count_and_one_per_bound():
    """a a b a b b: three switches, but the last (to b, nothing of a left) was not a choice;
    with a 10 s bound a switch counts 10 s after the burst began or the previous counted one."""
    models = "aababb"
    times = [0.0, 1.0, 2.0, 13.0, 14.0, 25.0]
    charges = [_charge(m, t) for m, t in zip(models, times, strict=True)]
    assert llm_bench.bounded_switches(charges, 0.0, 0.0) == (2, 2)
    assert llm_bench.bounded_switches(charges, 0.0, 10.0) == (2, 1)  # 13.0 only
    assert llm_bench.bounded_switches(charges, -20.0, 10.0) == (2, 2)  # 2.0, then 13.0
    assert llm_bench.bounded_switches(charges, -5.0, 12.0) == (2, 1)  # 2.0 is only 7 s in


def test_prefix_share_is_against_the_previous_request_for_the_same_model():
    """Each request after a model's first: its prompt's common prefix share with that model's
    previous prompt, whatever the other model sent in between."""
    charges = [
        _charge("a", 0, ("s", "s", "s", "1")),
        _charge("b", 1, ("t", "2")),
        _charge("a", 2, ("s", "s", "s", "2")),
        _charge("a", 3, ("q", "s", "s", "2")),
    ]
    assert llm_bench.prefix_shares(charges) == [pytest.approx(0.75), 0.0]


def test_keys_unknown_to_the_settings_are_not_written_and_say_so(monkeypatch):
    """A build without the settings gets neither key and a note; one with them gets both."""
    monkeypatch.setattr(llm_bench, "settings_have", lambda name: False)
    keys, note = llm_bench.ollama_keys(0.0, 1)
    assert keys == {} and "ollama.switch_after_s and ollama.parallel" in note
    monkeypatch.setattr(llm_bench, "settings_have", lambda name: True)
    assert llm_bench.ollama_keys(0.0, 2) == ({"switch_after_s": 0.0, "parallel": 2}, "")
    assert llm_bench.ollama_keys(None, 1) == ({"parallel": 1}, "")  # None: the default


def test_busy_time_is_the_union_of_requests_and_the_loads_they_paid():
    """Overlapping requests count once; a request's load (times the scale) comes before it."""
    spans = [
        Charge("a", 0, 1, 0, 1, 10.0, 0.0, 0.0, 0.0, 0, 2.0, 3.0),  # load 10 model s: 1.0-2.0
        Charge("a", 1, 1, 0, 1, 0.0, 0.0, 0.0, 0.0, 0, 2.5, 4.0),  # overlaps the first
        Charge("b", 0, 1, 0, 1, 0.0, 0.0, 0.0, 0.0, 0, 6.0, 7.0),
    ]
    assert llm_bench.busy_s(spans, scale=0.1) == pytest.approx(3.0 + 1.0)
