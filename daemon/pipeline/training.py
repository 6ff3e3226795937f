"""What a training set needs beyond the prompt, as pure functions: the record's tags, the base
caption of the CLIP-Interrogator-style prompt, and which text the .txt is built from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from daemon.config import RuleSettings
from daemon.pipeline.analyze.vocab import plain_phrase
from daemon.pipeline.compose.text import split_pieces
from daemon.records import Analysis, Composition

MAX_TAGS = 64


def tags_for(analysis: Analysis, threshold: float) -> list[str]:
    """The CLIP labels scoring at least ``threshold``, across the tables, best first, as plain
    comma-free phrases, each once (case-insensitively)."""
    scored = [(s.score, s.label) for ranked in analysis.values() for s in ranked]
    tags: list[str] = []
    seen: set[str] = set()
    for score, label in sorted(scored, key=lambda pair: -pair[0]):
        tag = plain_phrase(label)
        if score >= threshold and tag and tag.casefold() not in seen:
            seen.add(tag.casefold())
            tags.append(tag)
    return tags[:MAX_TAGS]


def base_caption(composition: Composition, analysis: Analysis, language: str) -> str:
    """What clip_prompt starts with: the LLM's brief caption (when it is English), else the
    first phrase of the LLM's prompt; without an LLM, the top subject label."""
    if composition.mode != "clip":
        context: Mapping[str, Any] = composition.context or {}
        brief = context.get("brief_caption")
        if isinstance(brief, str) and language.strip().casefold() in ("english", "en"):
            caption = plain_phrase(brief).rstrip(" .!?;:")
            if caption:
                return caption
        pieces = split_pieces(composition.prompt)
        if pieces:
            return pieces[0]
    for category in ("subjects", *analysis):
        ranked = analysis.get(category) or ()
        if ranked:
            return plain_phrase(max(ranked, key=lambda s: s.score).label)
    return ""


def caption_text(composition: Composition, clip_prompt: str | None, rule: RuleSettings) -> str:
    """The prompt the .txt line is built from: ``caption_from`` decides, and the mode's own
    prompt stands in when clip_prompt could not be built."""
    if rule.caption_from == "clip_prompt" and clip_prompt:
        return clip_prompt
    return composition.prompt


def hint_used(rule: RuleSettings, composition: Composition) -> bool:
    """Whether the folder's hint shaped this prompt: it reaches only an LLM, so not in clip
    mode or after a fallback to the template."""
    return bool(rule.hint.strip()) and composition.mode != "clip"
