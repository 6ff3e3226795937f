"""The ASGI guard in front of every route: Host, token, Origin, body size, safe headers.

In order: a ``Host`` not on the allow-list gets 400; a missing or wrong token (when
``api.token`` is set) 401; a state-changing request from another site 403; a declared
``Content-Length`` over the route's limit 413 at once, before any of the body is read, and a
body that grows past it while it arrives (chunked, or lying about its length) 413 as soon as
the limit is crossed. Every answer gets ``nosniff``, ``DENY`` framing and no referrer; the
review page also gets a strict Content-Security-Policy (its own scripts and styles only).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.api import policy
from daemon.api.problems import body

PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
BASE_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class Guard:
    """Pure ASGI middleware (no body buffering) enforcing ``daemon.api.policy``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: frozenset[str],
        token: str | None,
        limit_for: Callable[[str], int],
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.token = token
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope["path"]
        refusal = self._refusal(scope, headers, path)
        if refusal is not None:
            await _refuse(send, path, *refusal)
            return
        limit = self.limit_for(path)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(send, path, 413, "too_large", _too_large(limit))
            return
        await self.app(scope, _counting(receive, limit), _with_headers(send, path))

    def _refusal(self, scope: Scope, headers: Headers, path: str) -> tuple[int, str, str] | None:
        host_header = headers.get("host", "")
        if policy.host_name(host_header) not in self.hosts:
            return (
                400,
                "bad_host",
                (
                    f"Invalid host header {host_header!r}: this server answers to "
                    f"{policy.names_list(self.hosts)} (add a name to api.allowed_hosts)"
                ),
            )
        authorized = policy.token_ok(headers.get("authorization"), self.token or "")
        if self.token and policy.needs_token(path) and not authorized:
            return 401, "unauthorized", "send the API token: Authorization: Bearer TOKEN"
        why = policy.cross_site(
            scope["method"], headers.get("origin"), headers.get("sec-fetch-site"), host_header
        )
        return (403, "cross_site", why) if why else None


def _too_large(limit: int) -> str:
    return f"request body over {limit:,} bytes; the image limit is api.max_upload_bytes"


def _counting(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 once more than ``limit`` body bytes have arrived."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, _too_large(limit))
        return message

    return counted


def _with_headers(send: Send, path: str) -> Send:
    """``send`` that adds the safety headers to the response start."""
    page = path == "/" or path.startswith("/static/")

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            extra = list(BASE_HEADERS)
            if page:
                extra.append((b"content-security-policy", PAGE_CSP.encode()))
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


async def _refuse(send: Send, path: str, status: int, kind: str, message: str) -> None:
    """A JSON refusal sent straight from the guard (the app never sees the request)."""
    payload: dict[str, Any] = body(status, kind, message, path)
    data = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"connection", b"close"),
        *BASE_HEADERS,
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="promptd"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
