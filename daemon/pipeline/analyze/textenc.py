"""CLIP's text tower over many short texts (label tables, phrase lists), cached on disk.

``encode_texts`` encodes in chunks, shortest texts together so little is padding, and may take
the GPU lock per chunk, so a long first build (20,000 phrases) lets Ollama in between chunks.
``cached_tables`` reads the embeddings of a set of tables from the cache (``cache``) or
encodes and stores them: the text encoder runs once per (model, texts, precision).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import torch

from daemon.pipeline.analyze.cache import cache_key, load_embeddings, save_embeddings
from daemon.pipeline.analyze.loading import dimensions, features

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerBase

TEXT_CHUNK = 256  # texts per text-encoder pass
GpuSection = Callable[[], contextlib.AbstractContextManager[object]]

log = structlog.get_logger(__name__)


def normalized(embeddings: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, in float32."""
    return torch.nn.functional.normalize(embeddings.float(), dim=-1)


def encode_texts(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    device: str,
    *,
    tokenizer_lock: threading.Lock,
    gpu: GpuSection = contextlib.nullcontext,
) -> torch.Tensor:
    """Normalised float32 embeddings on the CPU, one row per text, in the order given.

    ``gpu`` is entered around each chunk's forward pass (by default nothing is).
    """
    width, max_length = dimensions(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    parts = []
    for start in range(0, len(order), TEXT_CHUNK):
        chunk = [texts[i] for i in order[start : start + TEXT_CHUNK]]
        with tokenizer_lock:
            tokens = tokenizer(
                chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
        with gpu(), torch.inference_mode():
            output = model.get_text_features(
                input_ids=tokens["input_ids"].to(device),
                attention_mask=tokens["attention_mask"].to(device),
            )
            parts.append(normalized(features(output, width)).cpu())
    stacked = torch.cat(parts) if parts else torch.empty(0, width)
    result = torch.empty_like(stacked)
    result[torch.tensor(order, dtype=torch.long)] = stacked
    return result


def cached_tables(
    cache_dir: Path,
    identity: str,
    tables: Mapping[str, tuple[str, ...]],
    dtype: torch.dtype,
    encode: Callable[[Sequence[str]], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], bool]:
    """The tables' embeddings from the cache, or encoded with ``encode`` and cached.

    Returns the embeddings (CPU, float32) and whether they had to be computed.
    """
    key = cache_key(identity, tables, str(dtype).removeprefix("torch."))
    embeddings = load_embeddings(cache_dir, key, tables)
    if embeddings is not None:
        return embeddings, False
    embeddings = {name: encode(texts) for name, texts in tables.items()}
    save_embeddings(cache_dir, key, identity, tables, embeddings)
    log.info(
        "clip_text_embeddings_computed",
        tables={name: len(texts) for name, texts in tables.items()},
        key=key[:12],
    )
    return embeddings, True
