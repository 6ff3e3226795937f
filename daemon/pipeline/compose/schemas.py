"""What the LLM must answer, per mode: pydantic models, their `format` schemas, and parsing.

The schemas handed to Ollama stay inside what its grammar converter handles reliably
(type, properties, required, enum, items, maxLength, maxItems): anything else can make
Ollama drop the constraint silently. Finer checks (non-empty prompt) happen here, after the
answer.

Bounded answers: every string of a `format` schema has a `maxLength` and every list a
`maxItems` (its strings a `maxLength` too), which the grammar enforces, so a chatty model
cannot spend its whole token budget on one field. Each field has a token target
(`FIELD_TOKENS`, `LIST_BOUNDS`; the prompts' ~150 / ~300 tokens of seed 000 among them);
its bound is ``CHARS_PER_BOUND_TOKEN`` (5) characters per target token: about 4 characters
a token in English, with a quarter of headroom. `answer_tokens` sizes `num_predict` to the
schema: each bound's characters at 4 a token, plus the JSON around them. pydantic does not
enforce the bounds: an answer past them (a server that ignores the grammar) is used as
before, the prompt fitted to the line's budget later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from daemon.errors import OutputError

SCHEMA_KEYS = frozenset(
    {"type", "properties", "required", "enum", "items", "$defs", "$ref", "maxLength", "maxItems"}
)
CHARS_PER_TOKEN = 4  # English text averages about 4 characters a token (llama3, gemma, qwen)
CHARS_PER_BOUND_TOKEN = 5  # a bound: 4 characters per target token, plus a quarter of headroom
# The token target of each string field; (most items, tokens per item) of each list field.
FIELD_TOKENS: dict[str, int] = {
    "prompt": 150,  # speed's prompt (seed 000: ~150 tokens)
    "generative_prompt": 300,  # quality's and vision's prompt (seed 000: ~300 tokens)
    "negative_prompt": 50,
    "brief_caption": 30,
    "detailed_description": 200,
    "setting": 20,
    "mood": 15,
    "style": 15,
    "text_in_image": 50,
}
LIST_BOUNDS: dict[str, tuple[int, int]] = {"objects": (8, 6), "people": (3, 20), "colors": (6, 5)}
DEFAULT_TOKENS, DEFAULT_LIST = 50, (8, 10)  # a field not named above
JSON_TOKENS_PER_FIELD = 8  # the quoted key, colon, quotes, comma and a line break
JSON_TOKENS_PER_ITEM = 3  # quotes, comma, space
JSON_TOKENS_PER_OBJECT = 8  # braces, first indent, end
CONTEXT_FIELDS = (
    "brief_caption",
    "detailed_description",
    "objects",
    "people",
    "setting",
    "mood",
    "style",
    "colors",
    "text_in_image",
    "generative_prompt",
)


def _prompt_text(value: str) -> str:
    value = value.strip()
    if len(value) < 3:
        raise ValueError("the prompt is empty or shorter than 3 characters")
    return value


def _as_list(value: Any) -> Any:
    """A model that answers one string where a list was asked gets a one-item list."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    return value


def _clean_items(value: list[str]) -> list[str]:
    return [item.strip() for item in value if item.strip()]


PromptText = Annotated[str, AfterValidator(_prompt_text)]
Text = Annotated[str, AfterValidator(str.strip)]
TextList = Annotated[list[str], BeforeValidator(_as_list), AfterValidator(_clean_items)]


class Output(BaseModel):
    """Base of the LLM answers: extra keys are ignored, the instance is immutable."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class SpeedOutput(Output):
    """`speed`: a concise English prompt and a negative prompt."""

    prompt: PromptText
    negative_prompt: Text


class ImageContext(Output):
    """Seed 001's "context image prompt": descriptive fields plus an English generative prompt."""

    brief_caption: Text
    detailed_description: Text
    objects: TextList
    people: TextList
    setting: Text
    mood: Text
    style: Text
    colors: TextList
    text_in_image: Text
    generative_prompt: PromptText


class QualityOutput(ImageContext):
    """`quality`: the image context (detailed prompt in `generative_prompt`) and a negative prompt."""

    negative_prompt: Text


class VisionOutput(QualityOutput):
    """`vision`: the same fields as `quality`, written by a model that sees the image."""


OutputT = TypeVar("OutputT", bound=Output)


def format_schema(model: type[Output]) -> dict[str, Any]:
    """The JSON schema for Ollama's `format`, reduced to the keys its grammar handles, with
    a `maxLength` on every string and a `maxItems` on every list (`_bound`)."""
    schema: dict[str, Any] = _reduce(model.model_json_schema())
    for name, spec in schema.get("properties", {}).items():
        _bound(name, spec)
    return schema


def bound_chars(tokens: int) -> int:
    """The `maxLength` of a string whose token target is ``tokens``."""
    return CHARS_PER_BOUND_TOKEN * tokens


def _bound(name: str, spec: dict[str, Any]) -> None:
    if spec.get("type") == "array":
        most, per_item = LIST_BOUNDS.get(name, DEFAULT_LIST)
        spec["maxItems"] = most
        items = spec.setdefault("items", {"type": "string"})
        if items.get("type") == "string":
            items["maxLength"] = bound_chars(per_item)
    elif spec.get("type") == "string" and "enum" not in spec:
        spec["maxLength"] = bound_chars(FIELD_TOKENS.get(name, DEFAULT_TOKENS))


def answer_tokens(schema: Mapping[str, Any]) -> int | None:
    """Tokens the longest answer `schema` allows takes, about: each bound's characters at
    ``CHARS_PER_TOKEN`` a token plus the JSON around them; None when a field is unbounded."""
    total = JSON_TOKENS_PER_OBJECT
    for spec in schema.get("properties", {}).values():
        if spec.get("type") == "array":
            item = _string_tokens(spec.get("items", {}))
            if item is None or not isinstance(spec.get("maxItems"), int):
                return None
            total += JSON_TOKENS_PER_FIELD + spec["maxItems"] * (item + JSON_TOKENS_PER_ITEM)
        else:
            tokens = _string_tokens(spec)
            if tokens is None:
                return None
            total += JSON_TOKENS_PER_FIELD + tokens
    return total


def _string_tokens(spec: Mapping[str, Any]) -> int | None:
    most = spec.get("maxLength")
    if spec.get("type") != "string" or not isinstance(most, int):
        return None
    return -(-most // CHARS_PER_TOKEN)


def _reduce(node: Any) -> Any:
    if isinstance(node, list):
        return [_reduce(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    reduced: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "$defs"):
            reduced[key] = {name: _reduce(sub) for name, sub in value.items()}
        elif key in SCHEMA_KEYS:
            reduced[key] = _reduce(value)
    return reduced


_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)


def parse_output(model: type[OutputT], text: str) -> OutputT:
    """Validate an LLM answer; tolerate thinking and code fences around the JSON object.

    Raises OutputError (say what was wrong) when there is no valid object.
    """
    body = _THINK.sub("", text)
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise OutputError(f"the answer is not a JSON object: {_excerpt(text)}")
    try:
        return model.model_validate_json(body[start : end + 1])
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'answer'}: {err['msg']}"
            for err in exc.errors()[:3]
        )
        raise OutputError(f"the answer does not fit the schema ({problems})") from exc


def _excerpt(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[:width] + "...")
