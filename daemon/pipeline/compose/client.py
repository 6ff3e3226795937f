"""The Ollama backend: one schema-constrained chat call, model capabilities, and error mapping.

`OllamaLLM` wraps the official `ollama.Client` with explicit timeouts (its default is none
at all), a size and time limit on every response (`bounded`), and reads answers streamed,
stopping once one grows past what its `num_predict` allows. Every failure becomes a daemon
error the caller can act on:
`TransientError` (unreachable, timeout, dropped connection, busy, server error: retry
later), `ModelMissingError` (404: someone must `ollama pull`), `OutputError` (any other
refusal: the request or answer is unusable). No httpx, pydantic or builtin connection
error escapes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import ollama

from daemon.config import OllamaSettings
from daemon.errors import ConfigError, ModelMissingError, OutputError, PromptdError, TransientError
from daemon.pipeline.compose.bounded import (
    RESPONSE_BYTES_PER_ANSWER_BYTE,
    ResponseTooLarge,
    answer_cap,
    chunk_cap,
    read_answer,
    response_limits,
)

TRANSIENT_STATUS = frozenset({408, 429})


@dataclass(frozen=True)
class LLMReply:
    """A model's whole answer, how it ended (`done_reason` "stop" or "length"), and the
    server's counts and times from the final chunk (None where the server left one out)."""

    text: str
    done_reason: str | None
    eval_count: int | None
    total_duration_ms: float | None
    load_duration_ms: float | None = None  # scheduling and loading: a few ms when resident
    prompt_eval_count: int | None = None  # prompt tokens (cached ones too, on most versions)
    prompt_eval_duration_ms: float | None = None  # prefill of the uncached part
    eval_duration_ms: float | None = None  # generating the eval_count output tokens

    def timings(self) -> dict[str, float]:
        """The record's LLM timings (``llm_load_ms``, ``llm_prompt_tokens``, ``llm_prompt_ms``,
        ``llm_output_tokens``, ``llm_output_ms``); a field the server did not send is absent."""
        values = {
            "llm_load_ms": self.load_duration_ms,
            "llm_prompt_tokens": self.prompt_eval_count,
            "llm_prompt_ms": self.prompt_eval_duration_ms,
            "llm_output_tokens": self.eval_count,
            "llm_output_ms": self.eval_duration_ms,
        }
        return {key: float(value) for key, value in values.items() if value is not None}


def _ms(nanoseconds: int | None) -> float | None:
    """Nanoseconds (Ollama's unit) as milliseconds; negative or missing is None."""
    return nanoseconds / 1e6 if isinstance(nanoseconds, int) and nanoseconds >= 0 else None


def _count(value: int | None) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def reply_from(final: ollama.ChatResponse, text: str) -> LLMReply:
    """The reply from an answer's text and its final (``done``) chunk, which carries how it
    ended and the server's counts and timings."""
    return LLMReply(
        text=text,
        done_reason=final.done_reason,
        eval_count=_count(final.eval_count),
        total_duration_ms=_ms(final.total_duration),
        load_duration_ms=_ms(final.load_duration),
        prompt_eval_count=_count(final.prompt_eval_count),
        prompt_eval_duration_ms=_ms(final.prompt_eval_duration),
        eval_duration_ms=_ms(final.eval_duration),
    )


class LLM(Protocol):
    """What the composer needs from a language model backend."""

    def chat_json(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        schema: Mapping[str, Any],
        *,
        num_predict: int,
        temperature: float,
        images: Sequence[bytes] | None = None,
    ) -> LLMReply:
        """One chat turn whose answer is constrained to `schema`; images go to the last user message."""
        ...

    def capabilities(self, model: str) -> frozenset[str]:
        """The model's capabilities ("completion", "vision", "thinking", ...)."""
        ...


def attach_images(
    messages: Sequence[Mapping[str, Any]], images: Sequence[bytes] | None
) -> list[dict[str, Any]]:
    """Copies of `messages` with `images` on the last user message (raw bytes; the client encodes)."""
    copies = [dict(message) for message in messages]
    if images:
        users = [i for i, message in enumerate(copies) if message.get("role") == "user"]
        if not users:
            raise OutputError("there is no user message to attach the image to")
        copies[users[-1]]["images"] = list(images)
    return copies


def keep_alive_value(value: str | float) -> str | float:
    """`keep_alive` as Ollama accepts it: a bare number string ("600") becomes seconds."""
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
        return float(value)
    return value


def runner_options(settings: OllamaSettings) -> dict[str, Any]:
    """The options that make Ollama reload a model when they change (``num_ctx`` here;
    ``num_batch``, ``num_gpu``, ``main_gpu``, ``use_mmap``, ``num_thread`` are never sent):
    one set from the settings, the same on every request (and the preload) for every model,
    so only sampling options (``temperature``, ``num_predict``: neither reloads) vary."""
    return {} if settings.num_ctx is None else {"num_ctx": settings.num_ctx}


class OllamaLLM:
    """An `LLM` talking to one Ollama server; capabilities are cached for the client's life."""

    def __init__(
        self,
        settings: OllamaSettings,
        *,
        gpu_lock: contextlib.AbstractContextManager[object] | None = None,
    ) -> None:
        self._settings = settings
        self._gpu_lock = gpu_lock
        self._capabilities: dict[str, frozenset[str]] = {}
        limits = settings.timeout
        timeout = httpx.Timeout(limits.read_s, connect=limits.connect_s)
        # httpx times each chunk: the hooks also bound a whole response, in bytes and seconds.
        hooks = response_limits(
            RESPONSE_BYTES_PER_ANSWER_BYTE * settings.max_answer_bytes,
            limits.connect_s + limits.read_s,
        )
        try:
            self._client = ollama.Client(host=settings.host, timeout=timeout, event_hooks=hooks)
        except (ValueError, httpx.InvalidURL) as exc:
            raise ConfigError(f"ollama.host {settings.host!r} is not a usable URL: {exc}") from exc
        # The client resolves host / $OLLAMA_HOST / the default; report the address it uses.
        self.host = str(self._client._client.base_url).rstrip("/")

    def chat_json(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        schema: Mapping[str, Any],
        *,
        num_predict: int,
        temperature: float,
        images: Sequence[bytes] | None = None,
    ) -> LLMReply:
        """One streamed chat turn with `format=schema`, read up to `answer_cap` bytes; raises
        TransientError, ModelMissingError, OutputError (an answer past the cap included)."""
        # think=False stops a thinking model from reasoning first; others must not get the key.
        think = False if "thinking" in self.capabilities(model) else None
        payload = attach_images(messages, images)
        options: dict[str, Any] = {"temperature": temperature, "num_predict": num_predict}
        options.update(runner_options(self._settings))
        cap = answer_cap(num_predict, self._settings.max_answer_bytes)
        with self._errors(model), self._working():
            chunks = self._client.chat(
                model=model,
                messages=payload,
                format=dict(schema),
                options=options,
                keep_alive=keep_alive_value(self._settings.keep_alive),
                think=think,
                stream=True,
            )
            text, final = read_answer(chunks, cap, chunk_cap(num_predict))
        return reply_from(final, text)

    def capabilities(self, model: str) -> frozenset[str]:
        """The capabilities `/api/show` lists for `model` (empty for servers older than 0.6.4)."""
        if model not in self._capabilities:
            with self._errors(model):
                shown = self._client.show(model)
            self._capabilities[model] = frozenset(shown.capabilities or ())
        return self._capabilities[model]

    def version(self) -> str:
        """The server's version string, e.g. "0.12.3"."""
        # ollama-python has no version() call: use its httpx client (same base URL and timeouts).
        http: httpx.Client = self._client._client
        with self._errors(None):
            response = http.get("/api/version")
            if response.is_error:
                raise ollama.ResponseError(response.text, response.status_code)
            answer = response.json()
        if not isinstance(answer, dict) or not isinstance(answer.get("version"), str):
            raise OutputError(f"Ollama at {self.host}: /api/version gave no version")
        return str(answer["version"])

    def list_models(self) -> list[str]:
        """The installed models' full names (`name:tag`), as `/api/tags` reports them."""
        with self._errors(None):
            listed = self._client.list()
        return [entry.model for entry in listed.models if entry.model]

    def preload(self, model: str) -> None:
        """Load `model` now (empty chat) so later requests find it in VRAM; kept per keep_alive."""
        with self._errors(model), self._working():
            self._client.chat(
                model=model,
                messages=[],
                options=runner_options(self._settings) or None,
                keep_alive=keep_alive_value(self._settings.keep_alive),
            )

    def _working(self) -> contextlib.AbstractContextManager[object]:
        return self._gpu_lock if self._gpu_lock is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def _errors(self, model: str | None) -> Iterator[None]:
        """Map whatever the client raises onto the daemon's errors."""
        try:
            yield
        except PromptdError as exc:
            if exc.path is None and not exc.message.startswith("Ollama at"):
                raise type(exc)(f"Ollama at {self.host}: {exc.message}") from exc
            raise
        except ResponseTooLarge as exc:
            raise OutputError(f"Ollama at {self.host}: {exc}") from exc
        except ollama.ResponseError as exc:
            raise self._refused(exc, model) from exc
        except httpx.TimeoutException as exc:
            raise TransientError(self._timed_out(exc)) from exc
        except (ConnectionError, httpx.ConnectError) as exc:
            raise TransientError(
                f"Ollama at {self.host}: not reachable (is `ollama serve` running?)"
            ) from exc
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            raise TransientError(
                f"Ollama at {self.host}: the connection failed ({type(exc).__name__}: {exc})"
            ) from exc
        except ValueError as exc:  # pydantic validation/serialisation, JSON decoding
            raise OutputError(
                f"Ollama at {self.host}: unusable request or answer ({type(exc).__name__}: {exc})"
            ) from exc

    def _timed_out(self, exc: httpx.TimeoutException) -> str:
        timeout = self._settings.timeout
        if isinstance(exc, httpx.ConnectTimeout):
            return f"Ollama at {self.host}: not reachable within {timeout.connect_s:g} s"
        return (
            f"Ollama at {self.host}: no answer within {timeout.read_s:g} s "
            "(a model loading or a busy server; raise ollama.timeout.read_s if this persists)"
        )

    def _refused(self, exc: ollama.ResponseError, model: str | None) -> PromptdError:
        status, error = exc.status_code, str(exc.error).strip()
        if status == 404 and model is not None:
            return ModelMissingError(
                f"model '{model}' is not available in Ollama at {self.host}: run `ollama pull {model}`"
            )
        if status == 503:
            return TransientError(f"Ollama at {self.host}: busy ({error})")
        if status == -1:
            return TransientError(f"Ollama at {self.host}: the answer broke off ({error})")
        if status >= 500 or status in TRANSIENT_STATUS:
            return TransientError(f"Ollama at {self.host}: server error {status} ({error})")
        return OutputError(f"Ollama at {self.host} refused the request ({status}: {error})")
