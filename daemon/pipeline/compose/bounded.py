"""Byte, chunk and time limits on what Ollama sends, whatever the server does.

``read_answer`` reads a streamed answer and stops once it passes ``answer_cap`` bytes or
``chunk_cap`` chunks (what its ``num_predict`` allows): a model or server that ignores
``num_predict``, or never stops, costs at most that.

httpx's read timeout applies to each chunk, so a server that trickles a byte at a time, or
one that never stops sending, would keep a request going forever; and a body is read whole
(one NDJSON line is buffered until its newline), so a huge one would fill memory.
``response_limits`` gives the event hooks that bound each response of an ``httpx.Client``:
at most ``max_bytes`` of body, and no more than ``seconds`` from the request's start to the
last byte. Past either, reading stops and the response is closed: ``ResponseTooLarge`` for
the size, ``ResponseOverdue`` (an ``httpx.ReadTimeout``) for the time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import ollama

from daemon.errors import OutputError, TransientError

_STARTED = "promptd.started"  # request extension: time.monotonic() when it was sent
BYTES_PER_TOKEN = 16  # UTF-8 of a token is rarely over 8 bytes (CJK, emoji): twice that
RESPONSE_BYTES_PER_ANSWER_BYTE = 32  # NDJSON framing around one-byte chunks, with room


def chunk_cap(num_predict: int) -> int:
    """Most chunks an answer of ``num_predict`` tokens may take: Ollama streams one token a
    chunk (a few merged at times), so many more means the server is not honouring it."""
    return num_predict + num_predict // 8 + 64


def answer_cap(num_predict: int, ceiling: int) -> int:
    """Most bytes an answer of ``num_predict`` tokens may take before reading stops."""
    return min(ceiling, BYTES_PER_TOKEN * num_predict + 1024)


def read_answer(
    chunks: Iterator[ollama.ChatResponse], cap: int, max_chunks: int | None = None
) -> tuple[str, ollama.ChatResponse]:
    """The text of a streamed answer and its final chunk; stops (closing the stream) once the
    text passes ``cap`` bytes or the stream ``max_chunks`` chunks (OutputError), and requires
    the final chunk (TransientError)."""
    parts: list[str] = []
    size = 0
    final: ollama.ChatResponse | None = None
    with contextlib.closing(chunks):  # type: ignore[type-var]
        for count, chunk in enumerate(chunks, 1):
            if max_chunks is not None and count > max_chunks:
                raise OutputError(
                    f"the answer ran past {max_chunks:,} chunks, more tokens than its token "
                    "budget allows; stopped reading"
                )
            content = chunk.message.content or ""
            size += len(content.encode("utf-8", "surrogatepass"))
            size += len((chunk.message.thinking or "").encode("utf-8", "surrogatepass"))
            if size > cap:
                raise OutputError(
                    f"the answer ran past {cap:,} bytes, more than its token budget allows; "
                    "stopped reading"
                )
            parts.append(content)
            if chunk.done:
                final = chunk
    if final is None:
        raise TransientError("the answer broke off before it was complete (no final chunk)")
    # JSON may spell lone surrogates (\ud800): they cannot be UTF-8, so they become U+FFFD.
    text = "".join(parts).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text, final


class ResponseTooLarge(Exception):
    """The server sent more than the limit for one response; reading stopped."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response ran past {limit:,} bytes; stopped reading")
        self.limit = limit


class ResponseOverdue(httpx.ReadTimeout):
    """The response was still arriving when its time was up; reading stopped."""


class _Bounded(httpx.SyncByteStream):
    """A response body that stops at ``limit`` bytes or at ``deadline`` (monotonic)."""

    def __init__(
        self, stream: httpx.SyncByteStream, limit: int, deadline: float, request: httpx.Request
    ) -> None:
        self._stream = stream
        self._limit = limit
        self._deadline = deadline
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        for chunk in self._stream:
            received += len(chunk)
            if received > self._limit:
                raise ResponseTooLarge(self._limit)
            if time.monotonic() > self._deadline:
                raise ResponseOverdue("the response took too long", request=self._request)
            yield chunk

    def close(self) -> None:
        self._stream.close()


def response_limits(max_bytes: int, seconds: float) -> dict[str, list[Callable[[Any], None]]]:
    """``event_hooks`` for ``httpx.Client``: each response at most ``max_bytes`` of body and
    ``seconds`` from its request's start to its end."""

    def stamp(request: httpx.Request) -> None:
        request.extensions[_STARTED] = time.monotonic()

    def bound(response: httpx.Response) -> None:
        request = response.request
        started = request.extensions.get(_STARTED, time.monotonic())
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)  # a sync client's responses
        response.stream = _Bounded(stream, max_bytes, started + seconds, request)

    return {"request": [stamp], "response": [bound]}
