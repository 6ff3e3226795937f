"""Pure text helpers: clean a model's prompt, fit the .txt line, and the no-LLM templates.

Nothing here talks to a model: `clean_prompt` turns whatever an LLM put in a prompt field
into one tidy line (through `daemon.clean`, the one cleaner of outside text), `assemble_line`
builds the .txt line within a token budget in time linear in the answer's length, and
`clip_template` / `interrogator_prompt` make prompts from the CLIP analysis alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial

from daemon.clean import clean_lines, clean_text
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
# No tokenizer's tokens are this long on average, so text beyond CHARS_PER_TOKEN characters per
# token of budget can never fit: fitting looks at no more than that, whatever the answer's size.
CHARS_PER_TOKEN = 32


def clean_prompt(text: str) -> str:
    """One clean line from an LLM's prompt text; never contains a newline, may be empty.

    First every line goes through `clean_text` (escape sequences, controls, invisible and bidi
    characters), so markup hidden behind them is seen; then removes <think> blocks, code
    fences, markdown (headings, bullets, emphasis, backticks), surrounding quotes, leading
    labels ("Prompt:", "Positive prompt:"), a trailing "Negative prompt: ..." part, duplicate
    commas and trailing punctuation.
    """
    text = "\n".join(clean_lines(text))
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
    return clean_text(_tidy(joined))


def clean_field(text: str) -> str:
    """A descriptive field of an answer (a caption, a list item) as one clean line: cleaned
    with `clean_text` line by line, then <think> blocks, code fences and backticks removed."""
    text = _THINK.sub(" ", "\n".join(clean_lines(text)))
    if "</think>" in text.lower():
        text = text[text.lower().rindex("</think>") + len("</think>") :]
    return clean_text(_FENCE.sub(" ", text).replace("`", ""))


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


def _pieces(parts: Sequence[str]) -> list[list[str]]:
    """Each part's pieces, a piece repeated (case-insensitively) kept only where it comes first."""
    seen: set[str] = set()
    pieces: list[list[str]] = []
    for part in parts:
        fresh = []
        for piece in split_pieces(part):
            if piece.lower() not in seen:
                seen.add(piece.lower())
                fresh.append(piece)
        pieces.append(fresh)
    return pieces


def _bounded(group: list[str], limit: int) -> list[str]:
    """The leading pieces of `group` that fit in `limit` characters (", " included); the piece
    that crosses the limit is cut at a word boundary."""
    kept: list[str] = []
    used = 0
    for piece in group:
        room = limit - used - (2 if kept else 0)
        if len(piece) <= room:
            kept.append(piece)
            used += len(piece) + (2 if len(kept) > 1 else 0)
            continue
        cut = piece[: room + 1].rsplit(" ", 1)[0] if room > 0 else ""
        cut = cut[:room].rstrip(_END_NOISE)
        if cut:
            kept.append(cut)
        break
    return kept


def fit_to_tokens(
    parts: Sequence[str],
    max_tokens: int,
    count_tokens: Callable[[str], int],
    *,
    keep: int = 0,
    trim_order: Sequence[int] | None = None,
) -> str:
    """Join the comma-separated pieces of `parts` with ", " and trim them to `max_tokens`.

    The first `keep` parts are never trimmed. The others lose trailing pieces, part by part in
    `trim_order` (default: last part first); a part's last remaining piece is cut at a word
    boundary rather than dropped when some of it fits. Pieces repeated (case-insensitively)
    are written once. If the kept parts alone exceed the budget they are returned whole.

    Near-linear in the length of `parts`: a trimmed part is first cut to
    `CHARS_PER_TOKEN * max_tokens` characters, then the number of whole pieces that fit is
    found by binary search, each step counting one candidate line with `count_tokens`. The
    line returned is one that was counted (or the kept parts alone), so it never exceeds the
    budget by the counter's own measure.
    """
    pieces = _pieces(parts)
    order = list(trim_order) if trim_order is not None else list(range(len(parts) - 1, -1, -1))
    trimmed = [i for i in order if i >= keep]
    for index in trimmed:
        pieces[index] = _bounded(pieces[index], CHARS_PER_TOKEN * max_tokens)

    def render(index: int = -1, candidate: Sequence[str] = ()) -> str:
        groups = (candidate if i == index else group for i, group in enumerate(pieces))
        return ", ".join(piece for group in groups for piece in group if piece)

    def fits(index: int, candidate: Sequence[str]) -> bool:
        return count_tokens(render(index, candidate)) <= max_tokens

    for index in trimmed:
        group = pieces[index]
        if count_tokens(render()) <= max_tokens:
            break
        if not group:
            continue
        low, high = 0, len(group) - 1  # the whole group is known not to fit
        while low < high:
            middle = (low + high + 1) // 2
            if fits(index, group[:middle]):
                low = middle
            else:
                high = middle - 1
        if low > 0:
            pieces[index] = group[:low]
            break
        first = _longest_fit(group[0].split(), partial(fits, index), max_tokens)
        pieces[index] = [first] if first else []
        if first:
            break
    return render()


def join_pieces(parts: Sequence[str]) -> str:
    """The comma-separated pieces of `parts` joined with ", ", repeats written once."""
    return ", ".join(piece for group in _pieces(parts) for piece in group)


def _longest_fit(words: list[str], fits: Callable[[list[str]], bool], max_tokens: int) -> str:
    """The longest word prefix whose rendered line fits (binary search); "" when none does."""
    low, high = 0, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        candidate = " ".join(words[:middle]).rstrip(_END_NOISE)
        if candidate and fits([candidate]):
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
    suffix, then the prefix. Every part goes through `clean_text` first (rule files are
    untrusted too), the prompt after being cut to what could ever fit. Raises OutputError if
    nothing at all is left to write.
    """
    triggers = [clean_text(word.replace(",", " ")) for word in trigger_words]
    triggers = [word for word in triggers if word]
    window = 2 * CHARS_PER_TOKEN * max_tokens  # cleaning may drop characters: leave room
    parts = [*triggers, clean_text(prefix), clean_text(prompt[:window]), clean_text(suffix)]
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
