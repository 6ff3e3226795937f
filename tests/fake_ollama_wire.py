"""Pure pieces of the fake Ollama server: request checks and answers as the Go server makes them.

Base64 decoding with Go's error offsets, `keep_alive` durations, the body checks that give
Go's 400 messages, the words a request offers for an answer, and a JSON-schema instance
filler. No sockets here; `tests.fake_ollama` serves these over HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it: method, path and parsed JSON body (or None)."""

    method: str
    path: str
    body: Any

    def images(self) -> list[str]:
        """Every base64 image in the body, from the messages (chat) or the top level (generate)."""
        if not isinstance(self.body, dict):
            return []
        found = list(self.body.get("images") or [])
        for message in self.body.get("messages") or []:
            if isinstance(message, dict):
                found.extend(message.get("images") or [])
        return found


class RequestProblem(Exception):
    """A request the real server would refuse: carries the status and the error text."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


_B64 = {
    c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
}
_NEWLINES = (ord("\n"), ord("\r"))


def go_b64decode(text: str) -> bytes:
    """Decode like Go's `base64.StdEncoding` (padding required, CR/LF skipped), Go's error text."""
    src, out, si = text.encode(), bytearray(), 0

    def corrupt(at: int) -> RequestProblem:
        return RequestProblem(400, f"illegal base64 data at input byte {at}")

    while True:
        quantum, j, final = [0, 0, 0, 0], 0, False
        while j < 4:
            if si == len(src):
                if j == 0:
                    return bytes(out)
                raise corrupt(si - j)
            c = src[si]
            si += 1
            if c in _B64:
                quantum[j] = _B64[c]
                j += 1
                continue
            if c in _NEWLINES:
                continue
            if c != ord("=") or j < 2:
                raise corrupt(si - 1)
            if j == 2:
                while si < len(src) and src[si] in _NEWLINES:
                    si += 1
                if si == len(src):
                    raise corrupt(len(src))
                if src[si] != ord("="):
                    raise corrupt(si - 1)
                si += 1
            while si < len(src) and src[si] in _NEWLINES:
                si += 1
            if si < len(src):
                raise corrupt(si)
            final = True
            break
        value = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3]
        out += value.to_bytes(3, "big")[: j - 1]
        if final:
            return bytes(out)


_DURATION_PART = r"\d*\.?\d+(?:ns|us|µs|μs|ms|s|m|h)"
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1,
    "m": 60,
    "h": 3600,
}


def keep_alive_seconds(value: Any) -> float:
    """Seconds a model stays loaded, parsed as Ollama parses `keep_alive` (negative: forever)."""
    if value is None:
        return 300.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float("inf") if value < 0 else float(value)
    if not isinstance(value, str):
        raise RequestProblem(400, f"Unsupported type: '{type(value).__name__}'")
    text = value.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    if not re.fullmatch(rf"[-+]?(?:{_DURATION_PART})+", text):
        if re.fullmatch(r"[-+]?\d*\.?\d+", text):
            raise RequestProblem(400, f'time: missing unit in duration "{value}"')
        raise RequestProblem(400, f'time: invalid duration "{value}"')
    total = sum(
        float(number) * _UNIT_SECONDS[unit]
        for number, unit in re.findall(r"(\d*\.?\d+)(ns|us|µs|μs|ms|s|m|h)", text)
    )
    return float("inf") if text.startswith("-") else total


_SCORED = re.compile(r"([A-Za-z][\w' \-]{1,60}?)\s*(?:\(\s*\d+(?:\.\d+)?\s*%?\s*\)|\b\d{1,3}%)")
_STOP_WORDS = """
    all and any are but can for has its may not one the two use was you about above after also
    answer anything around based been before being best between both could detailed describe
    description each english every field fields from give have here image images into json keep
    like list long make more most must never only other output over prompt reply return same
    should short single some such than that their them then there these they this those under
    using very what when where which while will with without words write your
"""
_STOP = frozenset(_STOP_WORDS.split())


def request_words(text: str) -> list[str]:
    """Phrases to answer with: scored labels (`label 91%` or `label (0.91)`) first, then the other plain words."""
    phrases: list[str] = []
    for match in _SCORED.finditer(text):
        phrase = " ".join(match.group(1).split())
        if phrase.lower() not in (p.lower() for p in phrases):
            phrases.append(phrase)
    seen = {word.lower() for phrase in phrases for word in phrase.split()}
    for word in re.findall(r"[A-Za-z]{3,}", text):
        if word.lower() not in _STOP and word.lower() not in seen:
            seen.add(word.lower())
            phrases.append(word.lower())
    return phrases


def instance_from_schema(schema: Mapping[str, Any], words: list[str]) -> Any:
    """A value valid against `schema` (type/properties/required/enum/items/$defs), made of `words`."""
    return _Filler(schema, words or ["image"]).value(schema, "")


class _Filler:
    """Walks a JSON schema and fills it, cycling through the request's words."""

    def __init__(self, root: Mapping[str, Any], words: list[str]) -> None:
        self.root, self.words, self.turn = root, words, 0

    def resolve(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in node:
            target: Any = self.root
            for key in node["$ref"].lstrip("#/").split("/"):
                target = target[key]
            node = target
        return node

    def value(self, node: Mapping[str, Any], name: str, *, short: bool = False) -> Any:
        node = self.resolve(node)
        if "const" in node:
            return node["const"]
        if node.get("enum"):
            return node["enum"][0]
        for key in ("anyOf", "oneOf", "allOf"):
            if node.get(key):
                options = [o for o in node[key] if self.resolve(o).get("type") != "null"]
                return self.value((options or node[key])[0], name, short=short)
        kind = node.get("type", "object" if "properties" in node else "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object":
            props = node.get("properties", {})
            return {key: self.value(sub, key) for key, sub in props.items()}
        if kind == "array":
            low, high = node.get("minItems", 0), node.get("maxItems", 2)
            count = max(low, min(2, high))
            return [self.value(node.get("items", {}), name, short=True) for _ in range(count)]
        if kind == "string":
            return self.text(name, node, short)
        return {"integer": 1, "number": 0.5, "boolean": True, "null": None}.get(kind, "")

    def next_word(self) -> str:
        word = self.words[self.turn % len(self.words)]
        self.turn += 1
        return word

    def text(self, name: str, node: Mapping[str, Any], short: bool) -> str:
        lowered = name.lower()
        if short:
            text = self.next_word()
        elif "negative" in lowered:
            text = "blurry, low quality, watermark"
        elif "prompt" in lowered:
            text = ", ".join(self.words[:12])
        elif "description" in lowered:
            text = "A picture of " + ", ".join(self.next_word() for _ in range(6)) + "."
        else:
            text = f"{self.next_word()} {self.next_word()}"
        while len(text) < node.get("minLength", 0):
            text += " image"
        return text[: node.get("maxLength", len(text))]


HOSTILE_TEXT = (
    "\x1b[31m{text}\x1b[0m\x00\x07\r\n\u202e{backwards}\u202c zero\u200bwidth\ufeff"
    " <think>hidden reasoning</think> ```fenced``` \x1b]0;title\x07"
)


def hostile_instance(value: Any) -> Any:
    """`value` (a schema instance) with every string wrapped in escape sequences, controls,
    a right-to-left override, zero-width characters, a <think> block and a code fence."""
    if isinstance(value, str):
        return HOSTILE_TEXT.format(text=value, backwards=value[::-1])
    if isinstance(value, list):
        return [hostile_instance(item) for item in value]
    if isinstance(value, dict):
        return {key: hostile_instance(item) for key, item in value.items()}
    return value


def padded_instance(value: Any, size: int) -> Any:
    """`value` with its prompt field (or first string) padded to about `size` bytes of
    comma-separated phrases: a model that ignores num_predict."""
    if not isinstance(value, dict):
        return value
    key = next((k for k in value if "prompt" in k and "negative" not in k), None)
    key = key or next((k for k, v in value.items() if isinstance(v, str)), None)
    if key is None:
        return value
    phrases = [str(value[key])]
    total = len(phrases[0])
    index = 0
    while total < size:
        phrase = f"endless phrase {index}"
        phrases.append(phrase)
        total += len(phrase) + 2
        index += 1
    return {**value, key: ", ".join(phrases)}


def schema_ignoring_answer(words: list[str]) -> dict[str, Any]:
    """Valid JSON that ignores the requested schema (none of its fields, other types)."""
    return {"description": " ".join(words[:6]) or "an image", "tags": words[:3], "score": 7}


def token_count(text: str) -> int:
    """About one token per four characters, as the fake counts them."""
    return (len(text) + 3) // 4


def parse_body(raw: bytes, go_type: str) -> dict[str, Any]:
    """The body as a dict, or the 400 the Go server gives for an empty or malformed one."""
    if not raw.strip():
        raise RequestProblem(400, "missing request body")
    try:
        body = json.loads(raw)
    except ValueError:
        first = raw.strip()[:1].decode(errors="replace")
        if first in '{["-0123456789tfn':
            raise RequestProblem(400, "unexpected EOF") from None
        raise RequestProblem(
            400, f"invalid character '{first}' looking for beginning of value"
        ) from None
    if not isinstance(body, dict):
        kind = "array" if isinstance(body, list) else type(body).__name__
        raise RequestProblem(
            400, f"json: cannot unmarshal {kind} into Go value of type api.{go_type}"
        )
    for key, kind in (
        ("model", str),
        ("prompt", str),
        ("messages", list),
        ("images", list),
        ("stream", bool),
    ):
        value = body.get(key)
        if value is not None and not isinstance(value, kind):
            raise RequestProblem(
                400,
                f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                f"{go_type}.{key} of type {kind.__name__}",
            )
    for image in RecordedRequest("", "", body).images():
        if not isinstance(image, str):
            raise RequestProblem(400, f"json: cannot unmarshal {type(image).__name__} into []byte")
    return body


def check_options(options: Any) -> None:
    if not isinstance(options, dict):
        raise RequestProblem(400, "json: cannot unmarshal options into map[string]interface {}")
    for key, kind in (("temperature", "float32"), ("num_predict", "int"), ("num_ctx", "int")):
        value = options.get(key)
        if value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "int":
            ok = ok and float(value).is_integer()
        if not ok:
            raise RequestProblem(500, f'option "{key}" must be of type {kind}')


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "").lower() == "user":
            return str(message.get("content") or "")
    return ""
