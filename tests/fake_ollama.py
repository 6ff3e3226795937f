"""A fake Ollama server for tests, following the wire protocol in shared/reference/ollama-api.md.

`FakeOllama` serves `/`, `/api/version`, `/api/tags`, `/api/ps`, `/api/show`, `/api/chat` and
`/api/generate` on 127.0.0.1 (a free port) over HTTP/1.1 with keep-alive, as the real server
does. It streams NDJSON unless `stream` is false, answers a JSON-schema `format` with a
schema-valid instance built from the words of the request (labels written as
`label 91%` first, so a test can see its analysis reached the model), honours
`num_predict` (about four characters a token) and records every request.

Each model call is also logged in `calls` (`ModelCall`: the marker of the image it is for,
the first `promptd-test-image:NAME` in its messages, e.g. from a folder's `hint`, and when it
started and ended), and `on_call(marker)` runs as a call starts: tests use it to kill a worker
at a chosen image.

Every final chunk (and non-streamed answer) carries Ollama's timing fields: `load_duration`,
`prompt_eval_count`, `prompt_eval_duration`, `eval_count`, `eval_duration`, `total_duration`
(nanoseconds). Without a cost model they are small fixed values (a warm model); with
`cost=CostModel(...)` (tests/fake_cost.py) each model call waits its modelled time (loads,
prefill of the uncached prompt, decode) and reports that model's exact counts and times.

Fault switches are plain attributes, safe to change while it runs: `delay_s`, `missing`,
`busy_count`, `drop_count`, `error_mid_stream`, `truncate`, `reply_override`, `replies`;
`down()` closes the listening socket and every open connection, `up()` listens again on the
same port. Hostile switches (a server or model that misbehaves): `hostile_text` (escape
sequences, controls, bidi and zero-width characters, <think> blocks and code fences in every
string of a schema-valid answer), `huge_answer_bytes` (a schema-valid answer of that size,
`num_predict` ignored), `endless` (a streamed answer that never ends until the client stops
reading), `one_line` (the whole answer in one NDJSON line), `ignore_schema` (valid JSON that
ignores the schema), `trickle_s` (a pause before each streamed line); `streamed_bytes` counts
the answer bytes a client let it send. Busy, drop, delay and the answer switches apply to the model endpoints (chat and
generate) only, as in the real server, where the scheduler and the runner live.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.fake_cost import Charge, CostModel, output_tokens, prompt_tokens
from tests.fake_ollama_wire import (
    RecordedRequest,
    RequestProblem,
    check_options,
    go_b64decode,
    hostile_instance,
    instance_from_schema,
    keep_alive_seconds,
    last_user_text,
    padded_instance,
    parse_body,
    request_words,
    schema_ignoring_answer,
    token_count,
)

DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "llama3.2:latest": ("completion",),
    "mistral:latest": ("completion",),
    "gemma3:4b": ("completion", "vision"),
    "gemma3:1b": ("completion",),
}
BUSY_TEXT = "server busy, please try again.  maximum pending requests exceeded"
VISION_ERROR_TEXT = "failed to process inputs: vision model not found"
ROUTES: dict[str, frozenset[str]] = {
    "/": frozenset({"GET", "HEAD"}),
    "/api/version": frozenset({"GET", "HEAD"}),
    "/api/tags": frozenset({"GET", "HEAD"}),
    "/api/ps": frozenset({"GET"}),
    "/api/show": frozenset({"POST"}),
    "/api/chat": frozenset({"POST"}),
    "/api/generate": frozenset({"POST"}),
}
THINK_LEVELS = (True, False, "low", "medium", "high", "max")
JSON_TYPE = "application/json; charset=utf-8"
MARKER = re.compile(r"promptd-test-image:([\w.-]+)")


@dataclass(frozen=True)
class ModelCall:
    """One chat or generate request: which image it was for, when it started and ended."""

    marker: str | None
    model: str
    started: float  # time.monotonic() of this process
    ended: float


def _marker(body: Mapping[str, Any]) -> str | None:
    texts = [str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict)]
    texts.append(str(body.get("prompt") or ""))
    for text in texts:
        found = MARKER.search(text)
        if found:
            return found.group(1)
    return None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details(name: str) -> dict[str, Any]:
    family = name.split(":")[0].rstrip("0123456789.") or "llama"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": "3B",
        "quantization_level": "Q4_K_M",
    }


def _normalise(name: str) -> str:
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


# --- the server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeOllama) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections cut by `down()` or the client are expected; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""

    def _handle(self) -> None:
        self.server.fake._handle(self)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = _handle


class FakeOllama:
    """A fake Ollama server with switchable faults; use as a context manager or start()/stop()."""

    def __init__(
        self,
        models: Mapping[str, Iterable[str]] | None = None,
        *,
        version: str = "0.12.3",
        vision_error_models: Iterable[str] = ("gemma3:1b",),
        cost: CostModel | None = None,
    ) -> None:
        source = DEFAULT_MODELS if models is None else models
        self.models: dict[str, tuple[str, ...]] = {
            _normalise(name): tuple(caps) for name, caps in source.items()
        }
        self.version = version
        self.vision_error_models = {_normalise(name) for name in vision_error_models}
        self.requests: list[RecordedRequest] = []
        self.calls: list[ModelCall] = []
        self.on_call: Callable[[str | None], None] | None = None
        self.loaded: dict[str, float] = {}  # model -> keep_alive seconds
        self.cost = cost  # None: answers at once, with small fixed timings
        # fault switches
        self.delay_s = 0.0
        self.missing: set[str] = set()
        self.busy_count = 0
        self.drop_count = 0
        self.error_mid_stream: str | None = None
        self.truncate = 0
        self.reply_override: str | None = None
        self.replies: deque[str] = deque()
        # hostile switches
        self.hostile_text = False
        self.huge_answer_bytes = 0
        self.endless = False
        self.one_line = False
        self.ignore_schema = False
        self.trickle_s = 0.0
        self.streamed_bytes = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # lifecycle

    @property
    def url(self) -> str:
        """The base URL to hand to a client, e.g. http://127.0.0.1:40123."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOllama:
        """Listen on a free port and serve in a background thread."""
        self._closing.clear()
        self._listen(0)
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and wake any delayed handler."""
        self._closing.set()
        self.down()

    def down(self) -> None:
        """Refuse connections: close the listening socket and every open connection."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        """Listen again on the same port after `down()`."""
        if self._server is None:
            self._listen(self.port)

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self, port: int) -> None:
        self._server = _Server(("127.0.0.1", port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(connection)

    # what tests read

    def bodies(self, path: str = "/api/chat") -> list[dict[str, Any]]:
        """The JSON bodies of the requests received on `path`, oldest first."""
        with self._lock:
            return [r.body for r in self.requests if r.path == path and isinstance(r.body, dict)]

    def _take(self, attribute: str) -> bool:
        """Use up one count of a counting switch; True if one was left."""
        with self._lock:
            left = int(getattr(self, attribute))
            if left > 0:
                setattr(self, attribute, left - 1)
            return left > 0

    # dispatch

    def _handle(self, h: _Handler) -> None:
        path = urlsplit(h.path).path
        raw = _read_body(h)
        try:
            body: Any = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(RecordedRequest(h.command, path, body))
        if path not in ROUTES:
            _send(h, 404, b"404 page not found", "text/plain")
            return
        if h.command not in ROUTES[path]:
            _send(h, 405, b"405 method not allowed", "text/plain")
            return
        try:
            self._route(h, path, raw)
        except RequestProblem as problem:
            _send_json(h, problem.status, {"error": problem.error})

    def _route(self, h: _Handler, path: str, raw: bytes) -> None:
        if path == "/":
            _send(h, 200, b"Ollama is running", "text/plain; charset=utf-8")
        elif path == "/api/version":
            _send_json(h, 200, {"version": self.version})
        elif path == "/api/tags":
            _send_json(h, 200, {"models": [self._tag(name) for name in self._installed()]})
        elif path == "/api/ps":
            _send_json(h, 200, {"models": [self._running(name) for name in list(self.loaded)]})
        elif path == "/api/show":
            self._show(h, parse_body(raw, "ShowRequest"))
        else:
            self._logged_call(h, parse_body(raw, "ChatRequest"), chat=path == "/api/chat")

    def _logged_call(self, h: _Handler, body: dict[str, Any], *, chat: bool) -> None:
        """A model call, logged in `calls` once answered (a load-only request is not)."""
        started = time.monotonic()
        marker = _marker(body)
        has_input = bool(body.get("messages") if chat else body.get("prompt"))
        if has_input and self.on_call is not None:
            self.on_call(marker)
        try:
            self._model_call(h, body, chat=chat)
        finally:
            if has_input:
                call = ModelCall(marker, str(body.get("model") or ""), started, time.monotonic())
                with self._lock:
                    self.calls.append(call)

    def calls_for(self, marker: str) -> list[ModelCall]:
        """The logged model calls for the image marked ``marker``, oldest first."""
        with self._lock:
            return [c for c in self.calls if c.marker == marker]

    def _installed(self) -> list[str]:
        missing = {_normalise(name) for name in self.missing}
        return [name for name in self.models if name not in missing]

    def _lookup(self, model: str) -> str:
        name = _normalise(model)
        if name not in self._installed():
            raise RequestProblem(404, f"model '{model}' not found")
        return name

    def _tag(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": "2025-05-10T08:06:48.639712648-07:00",
            "size": 2_019_393_189,
            "digest": _digest(name),
            "details": _details(name),
        }

    def _running(self, name: str) -> dict[str, Any]:
        seconds = min(self.loaded.get(name, 300.0), 10 * 365 * 86400.0)  # negative: "forever"
        until = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        entry = self._tag(name)
        del entry["modified_at"]
        return {
            **entry,
            "expires_at": until.isoformat(),
            "size_vram": entry["size"],
            "context_length": 4096,
        }

    def _show(self, h: _Handler, body: dict[str, Any]) -> None:
        model = body.get("model") or body.get("name") or ""
        if not model:
            raise RequestProblem(400, "model is required")
        name = self._lookup(model)
        details = _details(name)
        _send_json(
            h,
            200,
            {
                "modelfile": f"FROM {name}\n",
                "parameters": "stop <|eot_id|>",
                "template": "{{ .Prompt }}",
                "details": details,
                "model_info": {"general.architecture": details["family"]},
                "capabilities": list(self.models[name]),
                "modified_at": "2025-05-10T08:06:48.639712648-07:00",
            },
        )

    def _model_call(self, h: _Handler, body: dict[str, Any], *, chat: bool) -> None:
        model = body.get("model") or ""
        if not model:
            raise RequestProblem(400, "model is required")
        name = self._lookup(model)
        caps = self.models[name]
        messages = body.get("messages") or []
        images = [go_b64decode(image) for image in RecordedRequest("", "", body).images()]
        keep_alive = keep_alive_seconds(body.get("keep_alive"))
        think = body.get("think")
        if think is not None and think not in THINK_LEVELS:
            raise RequestProblem(400, f'invalid think value: "{think}"')
        if think not in (None, False) and "thinking" not in caps:
            raise RequestProblem(400, f'"{model}" does not support thinking')
        if "completion" not in caps:
            raise RequestProblem(
                400, f'"{model}" does not support {"chat" if chat else "generate"}'
            )
        options = body.get("options") or {}
        check_options(options)
        format_ = body.get("format")
        if format_ not in (None, "", "json") and not isinstance(format_, dict):
            raise RequestProblem(
                500,
                f'invalid format: {json.dumps(format_)}; expected "json" or a valid JSON Schema object',
            )
        if (chat and not messages) or (not chat and not body.get("prompt") and not images):
            self._load(h, name, keep_alive, chat=chat)
            return
        if self._take("busy_count"):
            raise RequestProblem(503, BUSY_TEXT)
        if self._take("drop_count"):
            h.close_connection = True
            return
        if images and "vision" not in caps and name in self.vision_error_models:
            raise RequestProblem(500, VISION_ERROR_TEXT)
        if self.delay_s > 0:
            self._closing.wait(self.delay_s)
        asked = last_user_text(messages) if chat else str(body.get("prompt") or "")
        text, reason = self._answer(
            asked, format_, options, blind=bool(images) and "vision" not in caps
        )
        thinking = "Considering the request." if "thinking" in caps and think is not False else ""
        streamed = body.get("stream", True) is not False
        paced = streamed and not (self.endless or self.one_line or self.error_mid_stream)
        if self.cost is not None and paced:  # the answer's pieces at the cost model's pace
            reply = _Reply(
                model, chat, text, reason, thinking, token_count(asked), raw=bool(body.get("raw"))
            )  # fmt: skip
            self.loaded[name] = keep_alive
            if keep_alive == 0:
                self.loaded.pop(name, None)
            self._count_stream(h, self._paced(name, body, chat=chat, reply=reply))
            return
        timings = self._charge(name, body, chat=chat, text=text)
        self.loaded[name] = keep_alive
        if keep_alive == 0:
            self.loaded.pop(name, None)
        reply = _Reply(
            model, chat, text, reason, thinking, token_count(asked), raw=bool(body.get("raw")),
            timings=timings,
        )  # fmt: skip
        if body.get("stream", True) is False:
            if self.error_mid_stream:
                raise RequestProblem(500, self.error_mid_stream)
            _send_json(h, 200, reply.whole())
        elif self.endless:
            self._count_stream(h, _endless_chunks(reply, self._closing))
        elif self.one_line:
            self._count_stream(h, [reply.whole()])
        else:
            self._count_stream(h, reply.chunks(self.error_mid_stream))

    def _count_stream(self, h: _Handler, lines: Iterable[dict[str, Any]]) -> None:
        """Stream `lines`, counting the answer bytes that get out before the client stops."""

        def counted() -> Iterator[dict[str, Any]]:
            for line in lines:
                if self.trickle_s > 0:
                    self._closing.wait(self.trickle_s)
                yield line
                content = line.get("message", {}).get("content") or line.get("response") or ""
                with self._lock:
                    self.streamed_bytes += len(content.encode("utf-8", "surrogatepass"))

        with contextlib.suppress(OSError):  # the client stopped reading: what endless awaits
            _send_stream(h, counted())

    def _paced(
        self, name: str, body: Mapping[str, Any], *, chat: bool, reply: _Reply
    ) -> Iterator[dict[str, Any]]:
        """The answer's chunks as the real server streams them: each piece once the cost model
        has decoded it (the load and prefill first), the final chunk with the charge's fields."""
        assert self.cost is not None
        lines = list(reply.chunks(None))
        tokens = prompt_tokens(
            *self._cost_messages(body, chat=chat), self.cost.hardware.image_tokens
        )
        steps = self.cost.stream(name, tokens, output_tokens(reply.text), len(lines) - 1)
        try:
            for line in lines[:-1]:
                next(steps)
                yield line
            next(steps)
        except StopIteration as done:
            charge: Charge = done.value
        finally:
            steps.close()
        self._evict_others(name)
        yield {**lines[-1], **charge.fields()}

    def _cost_messages(
        self, body: Mapping[str, Any], *, chat: bool
    ) -> tuple[list[dict[str, Any]], dict[int, list[bytes]]]:
        """The request as the cost model's template reads it: messages, and images by message."""
        if chat:
            messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        else:
            system = [{"role": "system", "content": body["system"]}] if body.get("system") else []
            user = {
                "role": "user",
                "content": body.get("prompt") or "",
                "images": body.get("images"),
            }
            messages = [*system, user]
        images = {
            index: [go_b64decode(str(image)) for image in message.get("images") or []]
            for index, message in enumerate(messages)
        }
        return messages, images

    def _evict_others(self, name: str) -> None:
        with self._lock:
            for other in [m for m in self.loaded if m != name]:
                self.loaded.pop(other)  # one resident model at a time

    def _charge(
        self, name: str, body: Mapping[str, Any], *, chat: bool, text: str
    ) -> dict[str, int] | None:
        """Run the cost model for this request (sleeping its time); its timing fields."""
        if self.cost is None:
            return None
        messages, images = self._cost_messages(body, chat=chat)
        tokens = prompt_tokens(messages, images, self.cost.hardware.image_tokens)
        charge = self.cost.run(name, tokens, output_tokens(text))
        self._evict_others(name)
        return charge.fields()

    def _load(self, h: _Handler, name: str, keep_alive: float, *, chat: bool) -> None:
        extra: dict[str, int] = {}
        if self.cost is not None and keep_alive != 0:
            load_s = self.cost.load(name)
            extra = {"load_duration": round(max(load_s, 0.004) * 1e9)}
            with self._lock:
                self.loaded.clear()
        if keep_alive == 0:
            self.loaded.pop(name, None)
            reason = "unload"
        else:
            self.loaded[name] = keep_alive
            reason = "load"
        empty = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
        _send_json(
            h,
            200,
            {
                "model": name,
                "created_at": _now(),
                **empty,
                "done": True,
                "done_reason": reason,
                **extra,
            },
        )

    def _answer(
        self, asked: str, format_: Any, options: Mapping[str, Any], *, blind: bool
    ) -> tuple[str, str]:
        with self._lock:
            scripted = self.replies.popleft() if self.replies else self.reply_override
        words = request_words(asked)
        hostile = self._hostile_answer(format_, words) if scripted is None else None
        if hostile is not None:
            return hostile, "stop"  # a misbehaving server: num_predict is not honoured
        if scripted is not None:
            text = scripted
        elif isinstance(format_, dict):
            text = json.dumps(instance_from_schema(format_, words))
        elif format_ == "json":
            text = json.dumps({"description": " ".join(words[:6]) or "an image"})
        elif blind:
            text = "I cannot see any image here; please describe it in words."
        else:
            text = "A picture of " + (", ".join(words[:8]) or "something") + "."
        limit = options.get("num_predict")
        if self._take("truncate"):
            return text[: max(1, len(text) // 2)], "length"
        if isinstance(limit, int) and limit > 0 and token_count(text) > limit:
            return text[: limit * 4], "length"
        return text, "stop"

    def _hostile_answer(self, format_: Any, words: list[str]) -> str | None:
        """The answer the hostile switches ask for, or None when none is on."""
        if not isinstance(format_, dict):
            return None
        if self.ignore_schema:
            return json.dumps(schema_ignoring_answer(words))
        if not (self.hostile_text or self.huge_answer_bytes):
            return None
        value = instance_from_schema(format_, words)
        if self.hostile_text:
            value = hostile_instance(value)
        if self.huge_answer_bytes:
            value = padded_instance(value, self.huge_answer_bytes)
        return json.dumps(value, ensure_ascii=False)


def _endless_chunks(reply: _Reply, closing: threading.Event) -> Iterator[dict[str, Any]]:
    """A streamed answer that opens a JSON object and never finishes it (nor ever says done);
    it stops only when the client stops reading (or the server stops, or 1 GB is out)."""
    head = {"model": reply.model, "created_at": _now()}
    yield {**head, **reply._piece('{"prompt": "'), "done": False}
    for _ in range(1 << 24):
        if closing.is_set():
            return
        yield {**head, **reply._piece("and more words, " * 4), "done": False}


@dataclass(frozen=True)
class _Reply:
    """One answer, rendered as a whole object or as NDJSON chunks."""

    model: str
    chat: bool
    text: str
    done_reason: str
    thinking: str
    prompt_tokens: int
    raw: bool
    timings: Mapping[str, int] | None = None  # the cost model's; None: small fixed ones

    def _piece(self, content: str, thinking: str = "") -> dict[str, Any]:
        if self.chat:
            message = {"role": "assistant", "content": content}
            return {"message": {**message, "thinking": thinking} if thinking else message}
        return {"response": content, **({"thinking": thinking} if thinking else {})}

    def _final(self) -> dict[str, Any]:
        evals = token_count(self.text)
        extra = {} if self.chat or self.raw else {"context": [1, 2, 3]}
        timings = self.timings or {
            "total_duration": 160_000_000 + max(1, evals) * 20_000_000,
            "load_duration": 4_000_000,  # warm: a few ms, as the real server reports
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": 100_000_000,
            "eval_count": evals,
            "eval_duration": max(1, evals) * 20_000_000,
        }
        return {"done": True, "done_reason": self.done_reason, **extra, **timings}

    def whole(self) -> dict[str, Any]:
        head = {"model": self.model, "created_at": _now()}
        return {**head, **self._piece(self.text, self.thinking), **self._final()}

    def chunks(self, error: str | None) -> Iterator[dict[str, Any]]:
        head = {"model": self.model, "created_at": _now()}
        if self.thinking:
            yield {**head, **self._piece("", self.thinking), "done": False}
        for index, piece in enumerate(re.findall(r"\S+\s*|\s+", self.text)):
            yield {**head, **self._piece(piece), "done": False}
            if error and index == 0:
                yield {"error": error}
                return
        if error:
            yield {"error": error}
            return
        yield {**head, **self._piece(""), **self._final()}


# --- HTTP plumbing


def _read_body(h: _Handler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        data = bytearray()
        while size := int(h.rfile.readline().split(b";")[0].strip() or b"0", 16):
            data += h.rfile.read(size)
            h.rfile.readline()
        h.rfile.readline()
        return bytes(data)
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))


def _send(h: _Handler, status: int, data: bytes, content_type: str) -> None:
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(data)


def _send_json(h: _Handler, status: int, payload: Any) -> None:
    _send(h, status, json.dumps(payload).encode(), JSON_TYPE)


def _send_stream(h: _Handler, lines: Iterable[dict[str, Any]]) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/x-ndjson")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    for line in lines:
        data = json.dumps(line).encode() + b"\n"
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()
    h.wfile.write(b"0\r\n\r\n")
