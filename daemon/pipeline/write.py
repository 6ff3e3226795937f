"""The *write* stage: the .txt line (trigger words, prefix, prompt, suffix, fitted to the token
budget) and the record, written through ``daemon.sidecar``; or the error record of an image
that could not be used, or of one that promptd crashed on (``write_quarantined``)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from daemon import sidecar
from daemon.errors import PromptdError, QuarantinedError
from daemon.pipeline.admit import Admitted, admit
from daemon.pipeline.compose.text import assemble_line
from daemon.pipeline.context import Context
from daemon.pipeline.training import caption_text, hint_used, tags_for
from daemon.records import Analysis, ClipPrompt, Composition, EffectiveRule, LoadedImage, Result


def prompt_line(
    composition: Composition, rule: EffectiveRule, ctx: Context, clip_prompt: str | None = None
) -> str:
    """The one line of the .txt: trigger words, prefix, prompt, suffix, fitted to the token
    budget; the prompt is the mode's, or ``clip_prompt`` when the rule's caption_from says so."""
    s = rule.settings
    prompt = caption_text(composition, clip_prompt, s)
    return assemble_line(
        s.trigger_words, s.prefix, prompt, s.suffix, s.max_prompt_tokens, _counter(ctx)
    )


def _counter(ctx: Context) -> Callable[[str], int]:
    analyzer = ctx.analyzer
    if analyzer is None:
        return estimate_tokens

    def count(text: str) -> int:
        try:
            return analyzer.count_tokens(text)
        except PromptdError:
            return estimate_tokens(text)

    return count


def estimate_tokens(text: str) -> int:
    """A conservative stand-in for the CLIP tokenizer: words and punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def negative_line(composition: Composition, rule: EffectiveRule) -> str:
    """The rule's fixed negative terms first, then the model's."""
    parts = [p for p in (rule.settings.negative_prompt.strip(), composition.negative_prompt) if p]
    return ", ".join(parts)


def write_ok(
    admitted: Admitted,
    loaded: LoadedImage,
    analysis: Analysis,
    composition: Composition,
    clip_reason: str | None,
    timings: dict[str, float],
    ctx: Context,
    *,
    clip_prompt: ClipPrompt | None = None,
) -> Result:
    """Write the .txt (unless a foreign caption is kept) and the .json; return the result."""
    started = time.perf_counter()
    rule = admitted.rule
    extra = clip_prompt or ClipPrompt(None)
    line = prompt_line(composition, rule, ctx, extra.text)
    reasons = [r for r in (clip_reason, composition.degraded_reason, extra.reason) if r]
    if extra.text and composition.context and "clip_prompt" in composition.context:
        # The seed-001 field and the record's clip_prompt are one thing when both exist.
        context = {**composition.context, "clip_prompt": extra.text}
        composition = replace(composition, context=context)
    status = "degraded" if reasons else "ok"
    txt_plan = sidecar.plan_txt(
        admitted.sidecars, rule.settings.existing_caption, admitted.previous
    )
    txt_line = line if txt_plan == "write" and "txt" in rule.settings.outputs else None
    doc = sidecar.build_sidecar(
        image=loaded,
        status=status,
        rule=rule,
        composition=composition,
        analysis=analysis,
        prompt=line,
        negative_prompt=negative_line(composition, rule),
        txt_name=admitted.sidecars.txt.name if txt_line is not None else None,
        txt_line=txt_line,
        txt_kept=txt_plan == "keep" and "txt" in rule.settings.outputs,
        clip_model=ctx.analyzer.model_id if ctx.analyzer is not None and not clip_reason else None,
        degraded_reason="; ".join(reasons) or None,
        timings_ms=timings,
        clip_prompt=extra.text,
        tags=tags_for(analysis, rule.settings.tag_threshold),
        hint_used=hint_used(rule.settings, composition),
    )
    written = sidecar.write_sidecars(
        admitted.sidecars, txt_line=txt_line, doc=doc, outputs=rule.settings.outputs
    )
    timings["write"] = elapsed_ms(started)
    return Result(
        admitted.path,
        "degraded" if reasons else "ok",
        "; ".join(reasons) or None,
        composition.mode,
        written,
        dict(timings),
    )


def write_error(admitted: Admitted, error: PromptdError, timings: dict[str, float]) -> Result:
    """Record why this image failed in its .json; no .txt; the image is left untouched."""
    doc = sidecar.build_error_sidecar(
        image_path=admitted.path,
        stat=admitted.stat,
        rule=admitted.rule,
        error=error,
        timings_ms=timings,
    )
    written = sidecar.write_sidecars(admitted.sidecars, txt_line=None, doc=doc, outputs=("json",))
    if sidecar.txt_is_ours(admitted.sidecars.txt, admitted.previous):
        # The image was fine before and is broken now: its old prompt no longer describes it.
        admitted.sidecars.txt.unlink(missing_ok=True)
    return Result(admitted.path, "error", error.message, None, written, dict(timings))


def write_quarantined(path: Path, ctx: Context, reason: str) -> Result:
    """Record that ``path`` must not be tried again until it changes: its error record,
    kind ``quarantined``, saying ``reason`` (e.g. promptd crashed twice while processing it).

    The record's freshness (size, mtime, rule fingerprint) is what keeps it from being
    retried; a changed file or rule makes it stale. When admit says no (the file is gone, a
    symlink, held by a rule file), that result is returned and nothing is written. May raise
    ``TransientError`` when the disk refuses.
    """
    admitted = admit(path, ctx, force=True)
    if isinstance(admitted, Result):
        return admitted
    return write_error(admitted, QuarantinedError(reason, path), {})


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - started) * 1000.0
