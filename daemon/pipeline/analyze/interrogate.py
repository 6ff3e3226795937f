"""The CLIP-Interrogator-style prompt (rule key ``clip_prompt``): a caption, then the phrases of
the vocabularies (``vocab``) that CLIP finds closest to the image.

As CLIP Interrogator builds it (reference/captioning-tools.md §1), in two passes:

- *classic*: the caption, then the best medium, (artist), movement, lighting and camera
  phrase and the three best flavours, ranked by the cosine similarity of each phrase's text
  embedding to the image embedding: one matrix product over every table;
- *chain*: from the classic prompt, a greedy search appends the phrase that raises the
  image-text similarity of the whole prompt most, as long as it rises and CLIP's 77-token
  window (75 tokens and the two markers) has room. Candidates are the ``CANDIDATES`` phrases
  closest to the image (the same product); a step encodes only ``clip.chain_width`` candidate
  prompts, those an estimate ranks best, in one forward pass of the prefix encoder (the prompt
  so far is not encoded again), and at most ``clip.chain_steps`` steps are taken.

The phrase embeddings are computed once per (model, phrases) and cached on disk like the label
tables; the image embedding is the one the analysis computed, so no second vision forward.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import torch

from daemon.config import ClipSettings
from daemon.pipeline.analyze.prefix import Prefix, PrefixEncoder, adopt
from daemon.pipeline.analyze.textenc import cached_tables
from daemon.pipeline.analyze.vocab import load_vocabularies, table_sizes

log = structlog.get_logger(__name__)

PICKS = {"mediums": 1, "artists": 1, "movements": 1, "lighting": 1, "camera": 1, "flavors": 3}
FIRST = ("mediums", "artists", "movements", "lighting", "camera")  # then other tables, flavors
CANDIDATES = 64  # phrases the chain draws from: those closest to the image
MAX_CONTENT_TOKENS = 75  # CLIP's 77 positions less the start and end markers
_EXACT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 3e-2}


class TextSource(Protocol):
    """What the interrogator borrows from the analyzer (daemon.pipeline.analyze.clip)."""

    @property
    def settings(self) -> ClipSettings: ...

    @property
    def cache_dir(self) -> Any: ...

    def identity(self) -> str: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...

    def token_ids(self, texts: Sequence[str], *, markers: bool = False) -> list[list[int]]: ...

    def count_tokens(self, text: str) -> int: ...

    def gpu(self) -> contextlib.AbstractContextManager[object]: ...


@dataclass(frozen=True, eq=False)
class _Vocab:
    phrases: tuple[str, ...]  # every table's, in table order
    tables: tuple[tuple[str, int, int], ...]  # name, first row, end row; classic order
    matrix: torch.Tensor  # one normalised float32 row per phrase, CPU


class Interrogator:
    """Builds clip_prompts for one loaded model; the vocabularies load on first use."""

    def __init__(self, source: TextSource, model: Any, dtype: torch.dtype) -> None:
        self._source = source
        self._encoder = PrefixEncoder(model)
        self._dtype = dtype
        self._lock = threading.Lock()
        self._vocab: _Vocab | None = None
        self._ids: dict[str, list[int]] = {}
        self._exact: bool | None = None
        self.tables_computed = 0  # vocabulary tables encoded, not read from the cache
        self.text_forwards = 0  # text-tower forward passes made by chains

    def prompt(self, caption: str, image: torch.Tensor) -> str:
        """The clip_prompt for the image with normalised embedding ``image``."""
        vocab = self._vocabulary()
        sims = vocab.matrix @ image.float().cpu()
        parts = [caption] if caption else []
        used: set[int] = set()
        for name, start, end in vocab.tables:
            wanted = PICKS.get(name, 1)
            for index in torch.argsort(sims[start:end], descending=True).tolist():
                if wanted == 0:
                    break
                if not _contained(vocab.phrases[start + index], parts):
                    parts.append(vocab.phrases[start + index])
                    used.add(start + index)
                    wanted -= 1
        parts = self._fit(parts)
        if self._source.settings.chain_steps > 0 and len(vocab.phrases) > len(used):
            parts = self._chain(parts, used, sims, vocab, image.float().cpu())
        return ", ".join(self._fit(parts, exact=True))

    # --- the chain -----------------------------------------------------------------------------

    def _chain(
        self,
        parts: list[str],
        used: set[int],
        sims: torch.Tensor,
        vocab: _Vocab,
        image: torch.Tensor,
    ) -> list[str]:
        settings = self._source.settings
        bos, eos = self._source.token_ids([""], markers=True)[0]
        pool = [
            i
            for i in torch.topk(sims, min(len(sims), CANDIDATES + len(used))).indices.tolist()
            if i not in used and not _contained(vocab.phrases[i], parts)
        ][:CANDIDATES]
        suffix = {i: self._comma_ids(vocab.phrases[i]) for i in pool}
        ids = [bos, *self._prompt_ids(parts)]
        self.text_forwards += 1
        if self._check_exact(bos, eos):
            with self._source.gpu():
                state, current = self._encoder.open(ids, eos)
            step = _Step(self, parts, state)
        else:
            step, current = (
                _Step(self, parts, None),
                self._source.encode_texts([", ".join(parts)])[0],
            )
        score = float(current @ image)
        for _ in range(settings.chain_steps):
            room = self._encoder.max_tokens - len(ids) - 1  # the end marker
            fits = [i for i in pool if len(suffix[i]) <= room]
            if not fits:
                break
            # Estimate what each phrase adds, then encode only the best few for real.
            guess = torch.nn.functional.normalize(len(parts) * current + vocab.matrix[fits], dim=-1)
            ranked = torch.argsort(guess @ image, descending=True)[: settings.chain_width]
            chosen = [fits[i] for i in ranked.tolist()]
            rows = [[*suffix[i], eos] for i in chosen]
            embeds, fresh = step.encode(rows, [vocab.phrases[i] for i in chosen])
            scores = embeds @ image
            best = int(torch.argmax(scores))
            if float(scores[best]) <= score:
                break
            pick = chosen[best]
            ids += suffix[pick]
            parts = [*parts, vocab.phrases[pick]]
            step = step.then(parts, fresh, best, suffix[pick])
            current, score = embeds[best], float(scores[best])
            pool.remove(pick)
        return parts

    # --- tokens ------------------------------------------------------------------------------

    def _comma_ids(self, phrase: str) -> list[int]:
        """The tokens of ", phrase" (what appending the phrase to a prompt adds)."""
        ids = self._ids.get(phrase)
        if ids is None:
            if len(self._ids) > 100_000:
                self._ids.clear()
            ids = self._ids[phrase] = self._source.token_ids([f", {phrase}"])[0]
        return ids

    def _prompt_ids(self, parts: list[str]) -> list[int]:
        return self._source.token_ids([", ".join(parts)])[0] if parts else []

    def _fit(self, parts: list[str], *, exact: bool = False) -> list[str]:
        """``parts`` less trailing phrases (the caption cut at a word) until the prompt has at
        most 75 tokens; ``exact`` counts the joined text with the tokenizer itself."""

        def size(candidate: list[str]) -> int:
            text = ", ".join(candidate)
            return self._source.count_tokens(text) if exact else len(self._prompt_ids(candidate))

        parts = list(parts)
        while len(parts) > 1 and size(parts) > MAX_CONTENT_TOKENS:
            parts.pop()
        if parts and size(parts) > MAX_CONTENT_TOKENS:
            words = parts[0].split()
            while words and size([" ".join(words)]) > MAX_CONTENT_TOKENS:
                words.pop()
            parts = [" ".join(words)] if words else []
        return parts

    # --- loading -------------------------------------------------------------------------------

    def _vocabulary(self) -> _Vocab:
        with self._lock:
            if self._vocab is None:
                self._vocab = self._load()
            return self._vocab

    def _load(self) -> _Vocab:
        tables = load_vocabularies(self._source.settings)  # ConfigError names a bad file
        identity = self._source.identity()
        matrices: dict[str, torch.Tensor] = {}
        for name, texts in tables.items():  # one cache entry per table
            found, computed = cached_tables(
                self._source.cache_dir, identity, {name: texts}, self._dtype,
                self._source.encode_texts,
            )  # fmt: skip
            matrices[name] = found[name].float()
            self.tables_computed += computed
        order = [n for n in FIRST if n in tables]
        order += [n for n in tables if n not in FIRST and n != "flavors"]
        order += ["flavors"] if "flavors" in tables else []
        phrases: list[str] = []
        spans = []
        for name in order:
            spans.append((name, len(phrases), len(phrases) + len(tables[name])))
            phrases.extend(tables[name])
        matrix = torch.cat([matrices[name] for name in order])
        log.info("clip_vocabularies_loaded", tables=table_sizes(tables))
        return _Vocab(tuple(phrases), tuple(spans), matrix)

    def _check_exact(self, bos: int, eos: int) -> bool:
        """Whether the prefix encoder agrees with the model's own text features (once)."""
        if self._exact is None:
            sample = ["a photo of a cat", "oil painting"]
            ids = self._source.token_ids(sample)
            with self._source.gpu():
                state = self._encoder.start([bos, *ids[0]])
                ours, _ = self._encoder.embed_after(state, [[*self._comma_ids(sample[1]), eos]])
            theirs = self._source.encode_texts([", ".join(sample)])
            gap = float((ours - theirs).abs().max())
            self._exact = gap <= _EXACT_TOLERANCE.get(self._dtype, 3e-2)
            if not self._exact:
                log.warning("clip_prefix_encoder_disagrees", gap=gap, fallback="whole prompts")
        return self._exact


@dataclass(frozen=True)
class _Step:
    """The chain's prompt so far, and how to encode it followed by candidate phrases: through
    the prefix encoder (``state``), or as whole prompts when that is not exact."""

    owner: Interrogator
    parts: list[str]
    state: Prefix | None

    def encode(
        self, rows: list[list[int]], phrases: list[str | None]
    ) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """Embeddings of the prompt followed by each row (token ids ending with the end
        marker) or phrase (None: the prompt alone); one forward pass."""
        owner = self.owner
        owner.text_forwards += 1
        if self.state is not None:
            with owner._source.gpu():
                return owner._encoder.embed_after(self.state, rows)
        texts = [", ".join([*self.parts, p] if p else self.parts) for p in phrases]
        return owner._source.encode_texts(texts), ()

    def then(self, parts: list[str], fresh: tuple[Any, ...], row: int, ids: list[int]) -> _Step:
        """The next step, the prompt extended by ``row``'s phrase (no forward pass)."""
        state = adopt(self.state, fresh, row, ids) if self.state is not None else None
        return _Step(self.owner, parts, state)


def _contained(phrase: str, parts: Sequence[str]) -> bool:
    """True when ``phrase`` already appears in the prompt (case-insensitively)."""
    key = phrase.casefold()
    return any(key in part.casefold() for part in parts)
