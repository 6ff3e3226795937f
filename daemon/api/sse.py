"""Server-Sent Events for an upload: the seed's stages as they happen, then one final event.

Each event has a name and a JSON ``data`` line that repeats it as ``status``, as seed 000's
stream did: ``analyzing``, ``analyzed`` (with the analysis), ``generating``, then exactly one
of ``complete`` (the prompt and the whole response of /api/images/analyze) or ``failed``
(``error: {kind, message}`` and the HTTP status it would have had). A failure is not named
``error``: browsers' EventSource fires its own ``error`` for a dropped connection. A comment
line keeps idle proxies from closing the stream. The stream is a POST, so browsers read it
with ``fetch`` and a stream reader (the review page does); EventSource cannot POST.

When the client goes away the work already on its way finishes (its result is dropped, or
kept when ``api.save_to`` is set); when the service stops, the stream ends with ``failed``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from daemon.api.deps import ApiDeps
from daemon.api.problems import ApiError
from daemon.api.runner import Ticket
from daemon.api.uploads import Prepared, analyze_answer, finish

HEARTBEAT_S = 15.0
STAGES = ("analyzing", "analyzed", "generating")
TERMINAL = ("complete", "failed")


def event(name: str, payload: Mapping[str, Any]) -> bytes:
    """One SSE event: ``event: NAME`` and ``data: {"status": NAME, ...}``."""
    data = json.dumps({**payload, "status": name}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


def failed(err: ApiError) -> bytes:
    """The terminal failure event."""
    error = {"kind": err.kind, "message": err.message}
    return event("failed", {"success": False, "error": error, "http_status": err.status})


async def upload_events(deps: ApiDeps, prepared: Prepared, ticket: Ticket) -> AsyncIterator[bytes]:
    """The stage events of one upload, ending with ``complete`` or ``failed``."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def hook(stage: str, payload: Mapping[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (stage, dict(payload)))
        except RuntimeError:  # the server's loop is gone; nobody is listening
            return

    work = asyncio.ensure_future(ticket.run(lambda: finish(deps, prepared, hook)))
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {getter, work}, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                yield event(*getter.result())
                continue
            getter.cancel()
            if work not in done:
                yield b": keep-alive\n\n"
                continue
            while not queue.empty():
                yield event(*queue.get_nowait())
            try:
                outcome, document = work.result()
            except ApiError as err:
                yield failed(err)
                return
            answer = analyze_answer(outcome, document, prepared.upload.hint)
            yield event("complete", answer)
            return
    finally:
        work.cancel()


class TicketStream(StreamingResponse):
    """An event stream that gives its upload's slot back however the response ends."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], ticket: Ticket) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._ticket.close()
