"""The guard: Host allow-list, the token, the Origin check, body limits, headers, no CORS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.api import policy
from daemon.api.guard import Guard
from daemon.config import load_config
from daemon.errors import ConfigError
from tests.fixtures_api import ApiWorld, png, write_api_config

TOKEN = "s3cret-token-for-tests-0123456789"


def analyze(world: ApiWorld, **headers: str) -> Any:
    return world.client.post(
        "/api/images/analyze",
        files={"image": ("a.png", png(), "image/png")},
        data={"mode": "clip"},
        headers=headers,
    )


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.nip.io"])
def test_guard_foreign_host_is_400_against_dns_rebinding(api_world: ApiWorld, host: str) -> None:
    """A Host that is not this server's (a rebinding attacker's name) gets 400, on any route."""
    for path in ("/", "/health", "/api/gallery"):
        answer = api_world.client.get(path, headers={"Host": host})
        assert answer.status_code == 400, path
        assert answer.json()["error"]["kind"] == "bad_host"


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST"])
def test_guard_loopback_names_pass(api_world: ApiWorld, host: str) -> None:
    """127.0.0.1, localhost and [::1] (any port, any case) are this server."""
    assert api_world.client.get("/health", headers={"Host": host}).status_code == 200


def test_guard_allowed_hosts_adds_names(make_world: Callable[..., ApiWorld]) -> None:
    """api.allowed_hosts lets a LAN name through."""
    world = make_world(api={"allowed_hosts": ["workstation.lan"]})
    assert world.client.get("/health", headers={"Host": "workstation.lan:8765"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_guard_cross_site_post_is_403(api_world: ApiWorld, headers: dict[str, str]) -> None:
    """A form another page posts (foreign or null Origin, cross-site fetch) does no work."""
    answer = analyze(api_world, **headers)
    assert answer.status_code == 403
    assert answer.json()["error"]["kind"] == "cross_site"
    assert api_world.deps.runner.served == 0


def test_guard_own_page_and_non_browser_clients_may_post(api_world: ApiWorld) -> None:
    """The review page (same Origin, same-origin fetch) and curl (neither header) pass."""
    own = {"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"}
    assert analyze(api_world, **own).status_code == 200
    assert analyze(api_world).status_code == 200


def test_guard_sends_no_cors_headers(api_world: ApiWorld) -> None:
    """No CORS middleware: other origins never get permission to read an answer."""
    answer = api_world.client.get("/health", headers={"Origin": "http://evil.example"})
    assert not [h for h in answer.headers if h.lower().startswith("access-control-")]
    preflight = api_world.client.options(
        "/api/images/analyze",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_guard_safety_headers_and_page_csp(api_world: ApiWorld) -> None:
    """nosniff and DENY everywhere; the page also gets a Content-Security-Policy."""
    page = api_world.client.get("/")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    health = api_world.client.get("/health")
    assert health.headers["x-content-type-options"] == "nosniff"


def test_token_required_off_loopback_or_promptd_refuses_to_start(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    """listen 0.0.0.0 without api.token: a ConfigError naming the file, the line and the fix."""
    path = write_api_config(
        tmp_path, tiny_clip_dir, "http://127.0.0.1:9", api={"listen": "0.0.0.0:8765"}
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    problems = "\n".join(caught.value.problems)
    assert "config.yaml:" in problems and "api.token" in problems
    fixed = write_api_config(
        tmp_path,
        tiny_clip_dir,
        "http://127.0.0.1:9",
        api={"listen": "0.0.0.0:8765", "token": TOKEN},
    )
    assert load_config(fixed, {}).api.token == TOKEN


def test_token_guards_every_route_but_the_page_shell(make_world: Callable[..., ApiWorld]) -> None:
    """With api.token: 401 without it or with a wrong one, 200 with it; the page still loads."""
    world = make_world(api={"token": TOKEN})
    assert world.client.get("/").status_code == 200
    assert world.client.get("/static/app.js").status_code == 200
    for path in ("/health", "/api/gallery", "/sdapi/v1/options"):
        assert world.client.get(path).status_code == 401, path
        wrong = world.client.get(path, headers={"Authorization": "Bearer wrong-token-xxxxxxxx"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        right = world.client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200, path
    assert analyze(world).status_code == 401
    assert analyze(world, Authorization=f"Bearer {TOKEN}").status_code == 200


def test_token_comparison_is_exact() -> None:
    """Only the whole token, after `Bearer`, passes."""
    assert policy.token_ok(f"Bearer {TOKEN}", TOKEN)
    assert policy.token_ok(f"bearer {TOKEN}", TOKEN)
    assert not policy.token_ok(f"Bearer {TOKEN[:-1]}", TOKEN)
    assert not policy.token_ok(f"Basic {TOKEN}", TOKEN)
    assert not policy.token_ok(None, TOKEN)
    assert not policy.token_ok("Bearer ", TOKEN)


def _run_guard(
    headers: list[tuple[bytes, bytes]], chunks: list[bytes], limit: int
) -> dict[str, Any]:
    """Drive the Guard with a raw ASGI request; returns the status and how much was read."""
    seen = {"read": 0, "app_reads": 0, "status": None}
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        chunk = pending.pop(0) if pending else b""
        seen["read"] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def app(scope: Any, rcv: Any, send: Any) -> None:
        while True:
            message = await rcv()
            seen["app_reads"] += 1
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            seen["status"] = message["status"]

    guard = Guard(app, hosts=frozenset({"127.0.0.1"}), token=None, limit_for=lambda _p: limit)
    scope = {"type": "http", "method": "POST", "path": "/api/images/analyze",
             "headers": [(b"host", b"127.0.0.1:8765"), *headers]}  # fmt: skip
    try:
        asyncio.run(guard(scope, receive, send))
    except Exception as exc:  # the 413 the app would turn into an answer
        seen["status"] = getattr(exc, "status_code", None)
    return seen


def test_guard_declared_length_over_the_limit_is_413_before_reading() -> None:
    """Content-Length over the limit: 413 at once, not one body byte read."""
    seen = _run_guard([(b"content-length", b"5000000")], [b"x" * 65536] * 80, limit=1_000_000)
    assert seen["status"] == 413
    assert seen["read"] == 0


def test_guard_chunked_body_is_cut_once_past_the_limit() -> None:
    """A body without Content-Length (or lying about it) stops being read past the limit."""
    chunks = [b"x" * 65536] * 80  # 5 MiB in all
    seen = _run_guard([], chunks, limit=1_000_000)
    assert seen["status"] == 413
    assert 1_000_000 < seen["read"] <= 1_000_000 + 65536
    lying = _run_guard([(b"content-length", b"10")], chunks, limit=1_000_000)
    assert lying["status"] == 413 and lying["read"] <= 1_000_000 + 65536


def test_guard_body_within_the_limit_reaches_the_app() -> None:
    """Under the limit the app reads its body and answers."""
    seen = _run_guard([(b"content-length", b"100")], [b"x" * 100], limit=1000)
    assert seen["status"] == 200 and seen["read"] == 100
