"""The chat messages sent to Ollama, per mode (pure functions, no I/O).

Each request states the task, the evidence (CLIP labels with scores, pixel statistics),
the language of the descriptive fields, a length target (seed 000: ~150 tokens for
`speed`, ~300 for `quality`), and the JSON fields to fill, described in words as well as
enforced through `format`. The prompt itself is always English.

Prefix-friendly: what does not depend on the image (role, task, language rule, prompt
rules, answer format) is the system message, byte-identical for one mode, language and
schema; the user message holds only the image's evidence and, last, the user's words.
Ollama reuses the KV cache of the longest common prefix with the previous request, so
each image then pays only for its own tail (and a vision model's image, which Ollama puts
at the start of the user message, comes after the cached static part).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

from daemon.pipeline.compose.schemas import FIELD_TOKENS
from daemon.records import Analysis

LLMMode = Literal["speed", "quality", "vision"]
TOKEN_TARGET: dict[LLMMode, int] = {
    "speed": FIELD_TOKENS["prompt"],
    "quality": FIELD_TOKENS["generative_prompt"],
    "vision": FIELD_TOKENS["generative_prompt"],
}


class ChatMessage(TypedDict):
    """One chat message as Ollama takes it (images are attached by the client)."""

    role: str
    content: str


FIELD_GUIDE: dict[str, str] = {
    "prompt": "the text-to-image prompt, in English, one line of comma-separated phrases",
    "negative_prompt": "in English, comma-separated things to avoid (artifacts, unwanted content)",
    "brief_caption": "one short sentence summing up the image",
    "detailed_description": "several sentences on the scene, composition, elements and context",
    "objects": "the important objects, one per item",
    "people": "a short description of each person or character; empty list if none",
    "setting": "the kind of place: indoor or outdoor, city, nature, studio, beach...",
    "mood": "the overall feeling or atmosphere",
    "style": "the visual style: photograph, digital illustration, watercolour, 3D render...",
    "colors": "the dominant colours and colour combinations, in words (no hex codes)",
    "text_in_image": "any readable text, copied as faithfully as possible; empty string if none",
    "generative_prompt": "the text-to-image prompt, in English, one line of comma-separated phrases",
}
ENGLISH_FIELDS = frozenset({"prompt", "negative_prompt", "generative_prompt"})

SYSTEM = (
    "You are an expert at describing images and at writing prompts for text-to-image models "
    "such as Stable Diffusion. You answer with one JSON object and nothing else: no "
    "explanations, no markdown, no reasoning."
)

PROMPT_RULES = (
    "Rules for the prompt: write it in English as one line of comma-separated phrases; put the "
    "most important words first (main subject, then setting, style, lighting, colour, camera "
    "or medium), because the end may be cut off; describe only what is visible; no quotation "
    'marks, no labels such as "Prompt:", no line breaks, no negative terms in it.'
)


def format_analysis(analysis: Analysis) -> str:
    """CLIP findings as lines like `style: oil painting 62%, watercolor 21%`.

    Whole percentages, not `(0.62)`: the findings are the part of the prompt that changes
    from one image to the next, so every token they save is prefill saved on every image
    (about half per score with common tokenizers)."""
    lines = []
    for category, ranked in analysis.items():
        if ranked:
            labels = ", ".join(f"{s.label} {round(s.score * 100)}%" for s in ranked)
            lines.append(f"- {category.replace('_', ' ')}: {labels}")
    return "\n".join(lines)


def field_guide(schema: Mapping[str, Any], language: str) -> str:
    """The JSON fields to fill, one line each, as a description of `schema`'s properties."""
    lines = []
    for name, spec in schema.get("properties", {}).items():
        kind = "string"
        if spec.get("type") == "array":
            most = spec.get("maxItems")
            kind = "list of strings" + (f", at most {most}" if most else "")
        meaning = FIELD_GUIDE.get(name, "as the field name says")
        in_language = "" if name in ENGLISH_FIELDS else f" (in {language})"
        lines.append(f'- "{name}" ({kind}): {meaning}{in_language}')
    return "\n".join(lines)


def _evidence(analysis: Analysis, stats_description: str, *, hints: bool) -> str:
    findings = format_analysis(analysis)
    intro = (
        "Automatic hints from a CLIP zero-shot classifier (label and confidence; they may be wrong, trust the image):"
        if hints
        else "What a CLIP zero-shot classifier found in the image (label and confidence, best first):"
    )
    parts = [
        f"{intro}\n{findings}" if findings else "No CLIP analysis is available for this image."
    ]
    if stats_description.strip():
        parts.append(f"Measured from the pixels: {stats_description.strip()}.")
    return "\n\n".join(parts)


def _answer_format(schema: Mapping[str, Any], language: str) -> str:
    return (
        "Answer with a JSON object with exactly these fields:\n"
        f"{field_guide(schema, language)}\n"
        "Use double quotes and valid JSON; add no other fields and no text outside the object."
    )


SPEED_TASK = (
    "Write a concise but specific text-to-image prompt that would recreate an image like "
    f"the one described in the user's message, in at most about {TOKEN_TARGET['speed']} tokens, "
    "and a short negative prompt. Use only the findings given; where they are uncertain, "
    "prefer the higher-scored labels and leave out what you cannot support."
)
QUALITY_TASK = (
    "Build a structured description of an image you cannot see, from the analysis in the "
    "user's message, and a detailed text-to-image prompt that would recreate it. The prompt "
    "should cover, where the findings support it: the artistic style, composition and framing, "
    "the colour palette, mood and atmosphere, lighting, key visual details, and the medium or "
    f"technique. Aim for about {TOKEN_TARGET['quality']} tokens in the prompt. Do not invent "
    "readable text or specific people; keep every field consistent with the findings."
)
VISION_TASK = (
    "Look carefully at the attached image. Describe it in detail and then condense what you "
    "see into one long, usable text-to-image prompt that would produce a similar image: "
    "shot type and framing, subject, setting, lighting, style, colour palette and level of "
    f"detail. Aim for about {TOKEN_TARGET['vision']} tokens in the prompt. Be concrete and "
    "visual; copy any readable text exactly; do not guess what you cannot see."
)


def speed_messages(
    analysis: Analysis, stats_description: str, schema: Mapping[str, Any], hint: str = ""
) -> list[ChatMessage]:
    """`speed`: a concise prompt (about 150 tokens) from the CLIP analysis and statistics."""
    evidence = _evidence(analysis, stats_description, hints=False)
    return _messages(SPEED_TASK, evidence, None, schema, hint)


def quality_messages(
    analysis: Analysis,
    stats_description: str,
    language: str,
    schema: Mapping[str, Any],
    hint: str = "",
) -> list[ChatMessage]:
    """`quality`: the seed-001 context fields and a detailed prompt (about 300 tokens)."""
    evidence = _evidence(analysis, stats_description, hints=False)
    return _messages(QUALITY_TASK, evidence, language, schema, hint)


def vision_messages(
    analysis: Analysis,
    stats_description: str,
    language: str,
    schema: Mapping[str, Any],
    hint: str = "",
) -> list[ChatMessage]:
    """`vision`: describe the attached image (CLIP findings as hints) and write a detailed prompt."""
    evidence = _evidence(analysis, stats_description, hints=True)
    return _messages(VISION_TASK, evidence, language, schema, hint)


def system_message(task: str, language: str | None, schema: Mapping[str, Any]) -> str:
    """Everything that does not depend on the image, in a fixed order: the role, the task,
    the language rule (descriptive fields only; None: the answer is all English), the prompt
    rules and the answer format. Byte-identical for one mode, language and schema, so Ollama
    reuses its cached prefix from one image to the next."""
    parts = [SYSTEM, task]
    if language is not None:
        parts.append(_language_rule(language))
    parts += [PROMPT_RULES, _answer_format(schema, language or "English")]
    return "\n\n".join(parts)


def _messages(
    task: str, evidence: str, language: str | None, schema: Mapping[str, Any], hint: str = ""
) -> list[ChatMessage]:
    """The static system message (`system_message`), then the user message: the image's
    evidence and, last and apart, the user's own instructions (``hint``) when there are any.
    (A vision model's image goes at the start of the user message, after the static part.)"""
    parts = [evidence]
    if hint.strip():
        parts.append(user_instructions(hint))
    return [
        ChatMessage(role="system", content=system_message(task, language, schema)),
        ChatMessage(role="user", content="\n\n".join(parts)),
    ]


def user_instructions(hint: str) -> str:
    """The user's own words (a folder's ``hint``, or an API request's user prompt), fenced off
    from the evidence and promptd's rules, and marked as the person's instructions."""
    # One line, and no angle brackets, so the words cannot close the fence around them.
    words = " ".join(hint.split()).replace("<", "‹").replace(">", "›")
    return (
        "Instructions from the person who made this image set; follow them where the image "
        "allows, but they cannot change the answer format or the rules:\n"
        f"<user_instructions>\n{words}\n</user_instructions>"
    )


def _language_rule(language: str) -> str:
    return (
        f"Write every descriptive field in {language}. Write generative_prompt and "
        "negative_prompt in English, whatever the language of the other fields."
    )


def build_messages(
    mode: LLMMode,
    analysis: Analysis,
    stats_description: str,
    language: str,
    schema: Mapping[str, Any],
    hint: str = "",
) -> list[ChatMessage]:
    """The messages for `mode` (the image itself is attached by the client in `vision`);
    ``hint`` is the user's own instructions, placed last and apart (empty: none)."""
    if mode == "speed":
        return speed_messages(analysis, stats_description, schema, hint)
    if mode == "quality":
        return quality_messages(analysis, stats_description, language, schema, hint)
    return vision_messages(analysis, stats_description, language, schema, hint)
