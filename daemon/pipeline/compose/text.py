"""Pure text helpers: clean a model's prompt, fit the .txt line, and the no-LLM templates.

Nothing here talks to a model: `clean_prompt` turns whatever an LLM put in a prompt field
into one tidy line, `assemble_line` builds the .txt line within a token budget, and
`clip_template` / `interrogator_prompt` make prompts from the CLIP analysis alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial

from daemon.errors import OutputError
from daemon.records import Analysis

GENERIC_NEGATIVE = "blurry, low quality, jpeg artifacts, watermark, text, deformed"
MIN_SCORE = 0.1  # labels scoring below this are noise in a softmax over 10-15 labels
TEMPLATE_ORDER = ("subjects", "style", "mood", "composition", "color_palette")

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.IGNORECASE | re.DOTALL)
_NEGATIVE_TAIL = re.compile(r"\bnegative[ _-]?prompt\b\s*[:=\-–—]?.*", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(r"```[\w-]*")
_BULLET = re.compile(r"^\s*(?:#{1,6}\s*|[-*+•·]\s+|\d{1,2}[.)]\s+)")
_LABEL_WORDS = (
    r"(?:(?:final|positive|generative|image|main|sd|stable diffusion|text-to-image|english)\s+)*"
    r"prompt"
)
_LABEL = re.compile(
    rf"^\s*(?:here(?:'s| is)\b[^:\n]{{0,60}}:|{_LABEL_WORDS}\s*[:=\-–—])\s*", re.IGNORECASE
)
_LABEL_LINE = re.compile(rf"^\W*{_LABEL_WORDS}\W*$", re.IGNORECASE)  # "# Prompt", "**Prompt**"
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“", "`": "`"}
_DOUBLE = frozenset('"“”«»„')
_END_NOISE = " \t,;:.-–—…|/\\"


def clean_prompt(text: str) -> str:
    """One clean line from an LLM's prompt text; never contains a newline, may be empty.

    Removes <think> blocks, code fences, markdown (headings, bullets, emphasis, backticks),
    surrounding quotes, leading labels ("Prompt:", "Positive prompt:"), a trailing
    "Negative prompt: ..." part, duplicate commas and trailing punctuation.
    """
    text = _THINK.sub(" ", text)
    if "</think>" in text.lower():  # an opening tag the model never wrote
        text = text[text.lower().rindex("</think>") + len("</think>") :]
    text = _NEGATIVE_TAIL.sub("", text)
    text = _FENCE.sub("\n", text).replace("`", "")
    lines = [_strip_label(_BULLET.sub("", line)).strip() for line in text.splitlines()]
    lines = [line for line in lines if not _LABEL_LINE.match(line)]
    joined = ""
    for line in filter(None, lines):
        joined = f"{joined}{_joiner(joined)}{line}" if joined else line
    joined = joined.replace("**", "").replace("__", "").replace("*", "")
    return _tidy(joined)


def _joiner(previous: str) -> str:
    return " " if previous[-1] in ",.;:!?" else ", "


def _strip_label(line: str) -> str:
    while True:
        stripped = _LABEL.sub("", line.replace("**", ""), count=1)
        if stripped == line.replace("**", ""):
            return line
        line = stripped


def _tidy(text: str) -> str:
    previous = None
    while text != previous:
        previous = text
        text = " ".join(text.split())
        text = _strip_label(text)
        text = _unquote(text)
        text = re.sub(r"\s+([,;.])", r"\1", text)
        text = re.sub(r",(?:\s*,)+", ",", text)
        text = text.strip(_END_NOISE).rstrip("!?" + _END_NOISE)
    return text


def _unquote(text: str) -> str:
    """Drop a pair of surrounding quotes, or a lone double quote at either end."""
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        return text[1:-1]
    if text[:1] in _DOUBLE and sum(text.count(q) for q in _DOUBLE) == 1:
        return text[1:]
    if text[-1:] in _DOUBLE and sum(text.count(q) for q in _DOUBLE) == 1:
        return text[:-1]
    return text


def split_pieces(text: str) -> list[str]:
    """The comma-separated pieces of `text`, stripped, empty ones dropped."""
    return [piece for piece in (" ".join(p.split()) for p in text.split(",")) if piece]


def fit_to_tokens(
    parts: Sequence[str],
    max_tokens: int,
    count_tokens: Callable[[str], int],
    *,
    keep: int = 0,
    trim_order: Sequence[int] | None = None,
) -> str:
    """Join the comma-separated pieces of `parts` with ", " and trim them to `max_tokens`.

    The first `keep` parts are never trimmed. The others lose trailing pieces one by one,
    part by part in `trim_order` (default: last part first); a part's last remaining piece
    is cut at a word boundary rather than dropped when some of it fits. Pieces repeated
    (case-insensitively) are written once. If the kept parts alone exceed the budget they
    are returned whole.
    """
    seen: set[str] = set()
    pieces: list[list[str]] = []
    for part in parts:
        fresh = [p for p in split_pieces(part) if p.lower() not in seen]
        seen.update(p.lower() for p in fresh)
        pieces.append(fresh)
    order = list(trim_order) if trim_order is not None else list(range(len(parts) - 1, -1, -1))

    def render(index: int = -1, candidate: str = "") -> str:
        groups = ([candidate] if i == index else group for i, group in enumerate(pieces))
        return ", ".join(piece for group in groups for piece in group if piece)

    for index in (i for i in order if i >= keep):
        group = pieces[index]
        while group and count_tokens(render()) > max_tokens:
            if len(group) > 1:
                group.pop()
                continue
            words = group[0].split()
            group[0] = _longest_fit(words, partial(render, index), max_tokens, count_tokens)
            if not group[0]:
                group.pop()
    return render()


def join_pieces(parts: Sequence[str]) -> str:
    """The comma-separated pieces of `parts` joined with ", ", repeats written once."""
    return fit_to_tokens(parts, 1, lambda _: 0)


def _longest_fit(
    words: list[str],
    render: Callable[[str], str],
    max_tokens: int,
    count_tokens: Callable[[str], int],
) -> str:
    """The longest word prefix whose rendered line fits (binary search); "" when none does."""
    low, high = 0, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        candidate = " ".join(words[:middle]).rstrip(_END_NOISE)
        if candidate and count_tokens(render(candidate)) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low]).rstrip(_END_NOISE)


def assemble_line(
    trigger_words: Sequence[str],
    prefix: str,
    prompt: str,
    suffix: str,
    max_tokens: int,
    count_tokens: Callable[[str], int],
) -> str:
    """The .txt line: trigger words, prefix, prompt, suffix, fitted to `max_tokens`.

    Trigger words are never dropped; the prompt loses its trailing pieces first, then the
    suffix, then the prefix. Raises OutputError if nothing at all is left to write.
    """
    triggers = [" ".join(word.replace(",", " ").split()) for word in trigger_words]
    triggers = [word for word in triggers if word]
    parts = [*triggers, prefix, prompt, suffix]
    base = len(triggers)
    fitted = fit_to_tokens(
        parts, max_tokens, count_tokens, keep=base, trim_order=(base + 1, base + 2, base)
    )
    if not fitted:
        raise OutputError("the prompt line is empty (no trigger words, prefix, prompt or suffix)")
    return fitted


def _labels(analysis: Analysis, *, per_category: int) -> list[tuple[str, str]]:
    """(category, label) pairs: known categories first, the best labels above MIN_SCORE."""
    categories = [c for c in TEMPLATE_ORDER if c in analysis]
    categories += sorted(c for c in analysis if c not in TEMPLATE_ORDER)
    found: list[tuple[str, str]] = []
    for category in categories:
        ranked = sorted(analysis[category], key=lambda scored: -scored.score)
        found += [(category, s.label) for s in ranked[:per_category] if s.score >= MIN_SCORE]
    return found


def clip_template(analysis: Analysis, stats_description: str) -> tuple[str, str]:
    """The no-LLM prompt (top CLIP labels, then the pixel statistics) and a generic negative.

    With an empty analysis (CLIP unavailable) the prompt is built from the statistics alone.
    """
    words = [
        f"{label} mood" if category == "mood" else label
        for category, label in _labels(analysis, per_category=2)
    ]
    words += split_pieces(stats_description)
    prompt = join_pieces(words) or "an image"
    return prompt, GENERIC_NEGATIVE


def interrogator_prompt(analysis: Analysis) -> str:
    """A clip-interrogator style tag prompt: the best label of each category, then runners-up."""
    best = _labels(analysis, per_category=1)
    more = [pair for pair in _labels(analysis, per_category=3) if pair not in best]
    return join_pieces([label for _, label in best + more])
