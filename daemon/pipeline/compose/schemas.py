"""What the LLM must answer, per mode: pydantic models, their `format` schemas, and parsing.

The schemas handed to Ollama stay inside what its grammar converter handles reliably
(type, properties, required, enum, items): anything else can make Ollama drop the
constraint silently. Finer checks (non-empty prompt) happen here, after the answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from daemon.errors import OutputError

SCHEMA_KEYS = frozenset({"type", "properties", "required", "enum", "items", "$defs", "$ref"})
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
    """The JSON schema for Ollama's `format`, reduced to the keys its grammar handles."""
    return _reduce(model.model_json_schema())  # type: ignore[no-any-return]


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
