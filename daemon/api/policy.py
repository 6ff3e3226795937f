"""Who may ask what, decided from a request's headers alone (pure functions, no I/O).

- Host: a request whose ``Host`` is not one of this server's names is refused (DNS
  rebinding points an attacker's name at 127.0.0.1; the browser then sends that name).
- Token: with ``api.token`` set, every route but the page shell needs ``Bearer TOKEN``,
  compared in constant time.
- Origin: any web page can POST a form to 127.0.0.1 without a preflight, so a request that
  changes something and comes from a browser must come from this server's own page: an
  ``Origin`` other than our own (``null`` included) or a ``Sec-Fetch-Site`` other than
  ``same-origin``/``none`` is refused. Clients that are not browsers (curl, chaiNNer, a
  ComfyUI node) send neither header and pass.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from daemon.config.apisettings import ApiSettings, split_listen

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = ("/", "/favicon.ico", "/docs", "/openapi.json")  # the page shell, no data
OPEN_PREFIXES = ("/static/",)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SAFE_FETCH_SITES = frozenset({"same-origin", "none"})
MULTIPART_SLACK = 256 * 1024  # boundaries, part headers and the small text fields
JSON_LIMIT = 1024 * 1024  # caption edits, find-and-replace, token counts
BASE64_ROUTES = ("/sdapi/v1/interrogate", "/api/images/analyze-json")
UPLOAD_ROUTES = ("/api/images/analyze", "/api/images/analyze-stream", "/image-context")


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lower-cased: ``[::1]:8765`` -> ``::1``."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(settings: ApiSettings) -> frozenset[str]:
    """The names this server answers to: loopback, the listen address, ``api.allowed_hosts``."""
    names = set(LOOPBACK_NAMES)
    host = split_listen(settings.listen)[0].lower()
    if host not in ("0.0.0.0", "::", ""):
        names.add(host)
    names.update(host_name(h) or h.lower() for h in settings.allowed_hosts)
    return frozenset(names)


def needs_token(path: str) -> bool:
    """Everything but the page shell and its static files needs the token (when one is set)."""
    return path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)


def token_ok(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return secrets.compare_digest(given.strip().encode(), token.encode())


def cross_site(
    method: str, origin: str | None, fetch_site: str | None, host_header: str
) -> str | None:
    """Why a state-changing request looks like it comes from another site; None when it is fine."""
    if method.upper() not in UNSAFE_METHODS:
        return None
    if fetch_site is not None and fetch_site.strip().lower() not in SAFE_FETCH_SITES:
        return f"Sec-Fetch-Site is {fetch_site!r}: only this server's own page may send this"
    if origin is None:
        return None
    parts = urlsplit(origin.strip())
    if origin.strip().lower() == "null" or parts.scheme not in ("http", "https"):
        return f"Origin {origin!r} is not this server: only its own page may send this"
    if parts.netloc.lower() != host_header.strip().lower():
        return (
            f"Origin {origin!r} is not this server ({host_header}): only its own page may send this"
        )
    return None


def body_limit(path: str, max_upload_bytes: int) -> int:
    """The most request-body bytes a route reads: room for one image, its base64, or 1 MiB."""
    if path in UPLOAD_ROUTES:
        return max_upload_bytes + MULTIPART_SLACK
    if path in BASE64_ROUTES:
        return (max_upload_bytes + 2) // 3 * 4 + MULTIPART_SLACK
    return JSON_LIMIT


def names_list(names: Iterable[str]) -> str:
    """``a, b, c`` for messages."""
    return ", ".join(sorted(names))
