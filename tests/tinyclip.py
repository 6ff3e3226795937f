"""A CLIP model built from scratch and saved like a hub download, for tests and benchmarks.

``build_tiny_clip`` writes a folder that ``CLIPModel.from_pretrained``, ``CLIPTokenizer`` and
``AutoImageProcessor`` load exactly as they load ``openai/clip-vit-base-patch32``: a config and
randomly initialised weights (seeded, so deterministic), a hand-made byte-level BPE tokenizer
(``vocab.json`` + ``merges.txt``) and an image processor config. The tokenizer knows every
word of the default label tables and a few common words as single tokens; any other text
falls back to one token per character, so all text tokenizes.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.pipeline.analyze.labels import DEFAULT_TABLES

if TYPE_CHECKING:
    from transformers import CLIPConfig

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"  # CLIP's BPE marks the last symbol of each word with this suffix
EXTRA_WORDS = (
    "a photo of the and with in on red green blue square circle cat dog sky sea tree "
    "house woman man city night day sunset bright dark light picture painting"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte-level alphabet: every byte maps to one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, chars, strict=True)}


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent pair first (ties: the larger pair), until every word is one symbol."""
    corpus = Counter((*word[:-1], word[-1] + EOW) for word in words if word)
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in corpus.items():
            for pair in pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            return merges
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        corpus = Counter({_merge(symbols, best): count for symbols, count in corpus.items()})


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def tokenizer_files(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json and merges.txt contents: bytes, bytes + </w>, the merged words, the specials."""
    alphabet = list(bytes_to_unicode().values())
    merges = learn_merges(words)
    tokens = [*alphabet, *(char + EOW for char in alphabet)]
    tokens += [left + right for left, right in merges]
    vocab: dict[str, int] = {}
    for token in [*tokens, BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def default_words() -> list[str]:
    """The lowercase words of the default label tables plus a few common ones, sorted."""
    text = " ".join(" ".join(labels) for labels in DEFAULT_TABLES.values()) + " " + EXTRA_WORDS
    return sorted(set(re.findall(r"[a-z]+", text.lower())))


def clip_config(vocab: dict[str, int], *, real_shape: bool) -> CLIPConfig:
    """A tiny CLIP, or the ViT-B/32 shape (CLIPConfig's defaults) with our tokenizer's ids."""
    from transformers import CLIPConfig

    ids = {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}
    if real_shape:
        return CLIPConfig(text_config=ids)
    return CLIPConfig(
        text_config={
            **ids,
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )


def build_tiny_clip(folder: Path, *, real_shape: bool = False, seed: int = 0) -> Path:
    """Save a seeded, randomly initialised CLIP with tokenizer and image processor into ``folder``."""
    import torch
    import transformers
    from transformers import CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer_files(default_words())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    tokenizer.save_pretrained(folder)

    config = clip_config(vocab, real_shape=real_shape)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)

    side = config.vision_config.image_size
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None)
    processor_class = processor_class or transformers.CLIPImageProcessor
    processor = processor_class(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    processor.save_pretrained(folder)
    return folder
