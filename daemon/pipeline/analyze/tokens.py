"""CLIP's tokenizer on its own (no weights): counting tokens for the 77-token window, and the
token ids the clip_prompt chain appends. Loaded on first use; one lock, because a tokenizer
is not safe to share between threads."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from daemon.config import ClipSettings
from daemon.pipeline.analyze.loading import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Tokens:
    """The model's tokenizer, loaded lazily and used under ``lock``."""

    def __init__(self, settings: ClipSettings) -> None:
        self._settings = settings
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._load_lock = threading.Lock()
        self.lock = threading.Lock()  # held around every call into the tokenizer

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer itself (raises ClipUnavailableError when it cannot be loaded)."""
        tokenizer = self._tokenizer
        if tokenizer is not None:
            return tokenizer
        with self._load_lock:
            if self._tokenizer is None:
                tokenizer = load_tokenizer(self._settings)
                # Counting the tokens of texts longer than the window is the point here; the
                # encoders truncate explicitly, so the tokenizer need not warn about length.
                tokenizer.model_max_length = 1_000_000
                self._tokenizer = tokenizer
            return self._tokenizer

    def count(self, text: str) -> int:
        """CLIP tokens in ``text`` without the start/end markers."""
        tokenizer = self.tokenizer()
        with self.lock:
            return len(tokenizer.tokenize(text))

    def ids(self, texts: Sequence[str], *, markers: bool = False) -> list[list[int]]:
        """Each text's token ids, with the start and end markers or without."""
        tokenizer = self.tokenizer()
        with self.lock:
            ids = [
                cast(list[int], tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)))
                for text in texts
            ]
            ends = [int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)]
        return [[ends[0], *row, ends[1]] if markers else row for row in ids]
