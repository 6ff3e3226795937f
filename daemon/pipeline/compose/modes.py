"""The compose stage: turn (CLIP analysis, pixel statistics, the image) into a prompt, per mode.

`speed` and `quality` ask a text model, `vision` asks a model that sees the image, `clip`
fills a template. Failures never escape: a busy or unreachable Ollama is retried with
backoff, a truncated or invalid answer is retried once with a doubled token budget, and
whatever still fails falls back to the `clip` template with a short, human reason. Every
string of an answer goes through `daemon.clean` before it is used (the prompt through
`clean_prompt`, the descriptive fields through `clean_tree`).

Each request's `num_predict` is sized to its schema (`answer_tokens`: the longest answer
the bounds allow), never above the configured `ollama.num_predict` for the mode. Ollama's
counts and times of every answered attempt are summed into `Composition.llm_timings`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from PIL import Image

from daemon.clean import clean_tree
from daemon.config import Mode, OllamaSettings, RuleSettings
from daemon.errors import ImageError, ModelMissingError, OutputError, TransientError
from daemon.pipeline.compose.client import LLM
from daemon.pipeline.compose.prompts import ChatMessage, LLMMode, build_messages
from daemon.pipeline.compose.schemas import (
    CONTEXT_FIELDS,
    Output,
    QualityOutput,
    SpeedOutput,
    VisionOutput,
    answer_tokens,
    format_schema,
    parse_output,
)
from daemon.pipeline.compose.text import (
    GENERIC_NEGATIVE,
    clean_field,
    clean_prompt,
    clip_template,
    interrogator_prompt,
)
from daemon.pipeline.load import encode_for_vision
from daemon.records import Analysis, Composition

log = structlog.get_logger()

OUTPUTS: dict[LLMMode, type[Output]] = {
    "speed": SpeedOutput,
    "quality": QualityOutput,
    "vision": VisionOutput,
}


class _Unsuitable(Exception):
    """The configured model cannot do this mode (e.g. no vision); retrying will not help."""


@dataclass(frozen=True)
class _Request:
    """Everything one LLM mode needs, fixed before the first attempt."""

    mode: LLMMode
    model: str
    messages: list[ChatMessage]
    schema: dict[str, Any]
    temperature: float
    image: Image.Image | None


class Composer:
    """Composes prompts by mode through an `LLM` (None: Ollama disabled, templates only)."""

    def __init__(
        self,
        settings: OllamaSettings,
        llm: LLM | None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        vision_long_side: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        cooldown_s: float = 30.0,
    ) -> None:
        self._settings = settings
        self._llm = llm
        self._sleep = sleep
        self._long_side = vision_long_side
        self._clock = clock
        self._cooldown_s = cooldown_s
        # Circuit breaker: once retries are used up, later images fall back at once for a
        # while instead of each waiting through the whole backoff schedule again.
        self._down_until = 0.0
        self._down_reason = ""

    def reset(self) -> None:
        """Ollama answers again (the service checked): stop skipping it."""
        self._down_until = 0.0

    def mark_down(self, reason: str) -> None:
        """Ollama failed outside a compose (e.g. loading the model at start): skip it a while."""
        self._down_until = self._clock() + self._cooldown_s
        self._down_reason = reason

    def compose(
        self,
        requested: Mode,
        rule: RuleSettings,
        analysis: Analysis,
        stats_description: str,
        image: Image.Image | None,
    ) -> Composition:
        """The prompt for one image in `requested` mode, or the `clip` template with a reason."""
        if requested == "clip":
            return _template(requested, analysis, stats_description, None, attempts=0)
        if self._llm is None:
            reason = "Ollama is not configured; used the CLIP template"
            return _template(requested, analysis, stats_description, reason, attempts=0)
        if requested == "vision" and image is None:
            reason = "vision mode needs the image, which was not available; used the CLIP template"
            return _template(requested, analysis, stats_description, reason, attempts=0)
        if self._clock() < self._down_until:
            reason = f"{self._down_reason} (not retried: Ollama failed moments ago); used the CLIP template"
            return _template(requested, analysis, stats_description, reason, attempts=0)
        model = str(getattr(self._settings.models, requested))
        schema = format_schema(OUTPUTS[requested])
        request = _Request(
            mode=requested,
            model=model,
            messages=build_messages(
                requested, analysis, stats_description, rule.language, schema, rule.hint
            ),
            schema=schema,
            temperature=float(getattr(self._settings.temperature, requested)),
            image=image,
        )
        return self._ask(self._llm, request, analysis, stats_description)

    def _ask(
        self, llm: LLM, request: _Request, analysis: Analysis, stats_description: str
    ) -> Composition:
        """Attempts with retries; the first usable answer wins, otherwise the template."""
        num_predict = request_tokens(self._settings, request.mode, request.schema)
        waits, widened, attempts = 0, False, 0
        images: list[bytes] | None = None
        spent: dict[str, float] = {}  # Ollama's counts and times, over every answered attempt

        def fallback(reason: str) -> Composition:
            done = _template(request.mode, analysis, stats_description, reason, attempts)
            return replace(done, llm_timings=dict(spent))

        while True:
            attempts += 1
            try:
                if request.mode == "vision" and images is None:
                    images = [self._vision_image(llm, request)]
                made = self._attempt(llm, request, num_predict, images, analysis, spent)
                return replace(made, attempts=attempts, llm_timings=dict(spent))
            except TransientError as exc:
                if waits >= self._settings.retries:
                    self.mark_down(exc.message)
                    return fallback(
                        f"{exc.message} (after {attempts} attempts); used the CLIP template"
                    )
                delay = self._settings.backoff_s * 2**waits
                log.warning("ollama_retry", model=request.model, error=exc.message, wait_s=delay)
                self._sleep(delay)
                waits += 1
            except ModelMissingError as exc:
                return fallback(f"{exc.message}; used the CLIP template")
            except _Unsuitable as exc:
                return fallback(f"{exc}; used the CLIP template")
            except OutputError as exc:
                if widened:
                    return fallback(
                        f"{request.model} gave unusable output twice ({exc.message}); "
                        "used the CLIP template"
                    )
                log.warning("ollama_bad_output", model=request.model, error=exc.message)
                widened, num_predict = True, num_predict * 2

    def _vision_image(self, llm: LLM, request: _Request) -> bytes:
        """The JPEG for the vision model, once it is known to see images."""
        if "vision" not in llm.capabilities(request.model):
            raise _Unsuitable(
                f"model '{request.model}' cannot see images (no 'vision' capability in Ollama); "
                "set ollama.models.vision to a vision model such as gemma3:4b"
            )
        assert request.image is not None  # compose() checked
        try:
            return encode_for_vision(request.image, self._long_side)
        except ImageError as exc:
            raise _Unsuitable(
                f"the image could not be prepared for {request.model}: {exc.message}"
            ) from exc

    def _attempt(
        self,
        llm: LLM,
        request: _Request,
        num_predict: int,
        images: Sequence[bytes] | None,
        analysis: Analysis,
        spent: dict[str, float],
    ) -> Composition:
        """One request and its answer made into a composition; adds Ollama's counts and
        times to ``spent`` before the answer is judged (a bad answer costs time too)."""
        reply = llm.chat_json(
            request.model,
            request.messages,
            request.schema,
            num_predict=num_predict,
            temperature=request.temperature,
            images=images,
        )
        for key, value in reply.timings().items():
            spent[key] = spent.get(key, 0.0) + value
        if reply.done_reason == "length":
            raise OutputError(f"the answer was cut off at num_predict={num_predict} tokens")
        output = parse_output(OUTPUTS[request.mode], reply.text)
        if isinstance(output, SpeedOutput):
            prompt, context = clean_prompt(output.prompt), None
        else:
            assert isinstance(output, QualityOutput)
            prompt = clean_prompt(output.generative_prompt)
            context = _context(output, prompt, analysis)
        if len(prompt) < 3:
            raise OutputError("the prompt was empty once cleaned of markup and labels")
        negative = clean_prompt(getattr(output, "negative_prompt", "")) or GENERIC_NEGATIVE
        return Composition(
            requested_mode=request.mode,
            mode=request.mode,
            prompt=prompt,
            negative_prompt=negative,
            context=context,
            models={"llm": request.model},
        )


def request_tokens(settings: OllamaSettings, mode: LLMMode, schema: Mapping[str, Any]) -> int:
    """The first attempt's `num_predict`: what the longest answer `schema` allows takes
    (`answer_tokens`), capped by the configured `ollama.num_predict` for `mode` (which is
    used as it is when the schema is unbounded)."""
    configured = int(getattr(settings.num_predict, mode))
    needed = answer_tokens(schema)
    return configured if needed is None else max(1, min(configured, needed))


def _context(output: QualityOutput, prompt: str, analysis: Analysis) -> dict[str, Any]:
    """Seed 001's ten fields (prompt cleaned) plus the clip-interrogator style tag prompt."""
    fields = output.model_dump(include=set(CONTEXT_FIELDS))
    context: dict[str, Any] = {}
    for name in CONTEXT_FIELDS:
        value = fields[name]
        if isinstance(value, list):
            context[name] = [item for item in map(clean_field, value) if item]
        else:
            context[name] = clean_field(value)
    context["generative_prompt"] = prompt
    context["clip_prompt"] = interrogator_prompt(analysis)
    cleaned: dict[str, Any] = clean_tree(context)
    return cleaned


def _template(
    requested: Mode,
    analysis: Analysis,
    stats_description: str,
    reason: str | None,
    attempts: int,
) -> Composition:
    """The `clip` composition; `reason` set means it stands in for a failed mode."""
    prompt, negative = clip_template(analysis, stats_description)
    return Composition(
        requested_mode=requested,
        mode="clip",
        prompt=prompt,
        negative_prompt=negative,
        context=None,
        models={},
        degraded_reason=reason,
        attempts=attempts,
    )
