"""Where the LLM's time went: model loads and tokens per second, summed over results.

Pure arithmetic over the ``llm_*`` timings each record carries (``Result.timings_ms``, from
Ollama's final chunk): `promptd status` (through the tally and the status file) and the
`promptd process` summary line both show them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LOAD_MS = 500.0  # a load_duration this long is a model load; a resident model takes a few ms


@dataclass(frozen=True)
class LLMTime:
    """Totals over the images that reached Ollama."""

    answers: int = 0  # images with Ollama timings
    loads: int = 0  # of those, images whose load_duration was at least LOAD_MS
    prompt_tokens: int = 0
    prompt_ms: float = 0.0
    output_tokens: int = 0
    output_ms: float = 0.0

    def plus(self, timings: Mapping[str, float]) -> LLMTime:
        """These totals with one image's timings added (unchanged when it has none)."""
        if not any(key.startswith("llm_") for key in timings):
            return self
        return LLMTime(
            answers=self.answers + 1,
            loads=self.loads + (timings.get("llm_load_ms", 0.0) >= LOAD_MS),
            prompt_tokens=self.prompt_tokens + int(timings.get("llm_prompt_tokens", 0)),
            prompt_ms=self.prompt_ms + timings.get("llm_prompt_ms", 0.0),
            output_tokens=self.output_tokens + int(timings.get("llm_output_tokens", 0)),
            output_ms=self.output_ms + timings.get("llm_output_ms", 0.0),
        )

    @property
    def output_rate(self) -> float | None:
        """Output tokens per second of generating; None before any was timed."""
        return _rate(self.output_tokens, self.output_ms)

    @property
    def prompt_rate(self) -> float | None:
        """Prompt tokens per second of prefill; None before any was timed. With Ollama's
        prompt cache the count includes reused tokens, so this rises with prefix reuse."""
        return _rate(self.prompt_tokens, self.prompt_ms)

    def describe(self) -> str:
        """E.g. ``2 model loads, output 41.3 tokens/s, prompt 812 tokens/s`` (or a note)."""
        if not self.answers:
            return "no answers yet"
        loads = f"{self.loads} model load{'' if self.loads == 1 else 's'}"
        return f"{loads}, output {_shown(self.output_rate)}, prompt {_shown(self.prompt_rate)}"

    @classmethod
    def from_json(cls, value: Any) -> LLMTime:
        """Read back what ``dataclasses.asdict`` wrote; anything unreadable is zero."""
        if not isinstance(value, dict):
            return cls()
        return cls(
            answers=_number(value.get("answers"), int),
            loads=_number(value.get("loads"), int),
            prompt_tokens=_number(value.get("prompt_tokens"), int),
            prompt_ms=_number(value.get("prompt_ms"), float),
            output_tokens=_number(value.get("output_tokens"), int),
            output_ms=_number(value.get("output_ms"), float),
        )


def total(timings_of: Iterable[Mapping[str, float]]) -> LLMTime:
    """The totals over some results' ``timings_ms``."""
    sums = LLMTime()
    for timings in timings_of:
        sums = sums.plus(timings)
    return sums


def _rate(tokens: int, ms: float) -> float | None:
    return tokens / (ms / 1000.0) if tokens > 0 and ms > 0 else None


def _shown(rate: float | None) -> str:
    if rate is None:
        return "- tokens/s"
    return f"{rate:.1f} tokens/s" if rate < 100 else f"{rate:,.0f} tokens/s"


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    """A non-negative finite number of ``kind`` (ints stay ints), else 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return kind(0)
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        return kind(0)
    return kind(value)
