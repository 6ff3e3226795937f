"""CLIP zero-shot analysis: score images against the label tables, text encoded once and cached.

Seed 000 ran a full CLIP forward per image and per table, re-encoding every label each time.
Here the label texts are encoded once (then read from the on-disk cache), and each batch of
images costs one vision forward; per table the scores are the same softmax over
``logit_scale * cos(image, label)`` that the seed read from ``logits_per_image``.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import torch
from PIL import Image

from daemon.config import ClipSettings
from daemon.errors import ConfigError
from daemon.pipeline.analyze.cache import (
    cache_key,
    load_embeddings,
    model_identity,
    save_embeddings,
)
from daemon.pipeline.analyze.labels import LabelTables, label_tables
from daemon.pipeline.analyze.loading import (
    ClipUnavailableError,
    dimensions,
    features,
    load_model,
    load_tokenizer,
    move_to,
    resolve_device,
)
from daemon.records import Analysis, Scored

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerBase

__all__ = ["ClipAnalyzer", "ClipUnavailableError", "clip_input", "top_labels"]

log = structlog.get_logger(__name__)

_TEXT_CHUNK = 256  # labels per text-encoder pass when (re)building the cache
MAX_ASPECT = 8  # longer images are trimmed to their middle before preprocessing


@dataclass(frozen=True)
class _Loaded:
    """A loaded model with everything analyze() needs; replaced as a whole, never mutated."""

    model: CLIPModel
    processor: Any  # an image processor: __call__(images=..., return_tensors="pt")
    device: str
    dtype: torch.dtype
    text: Mapping[str, torch.Tensor]  # table -> normalised float32 label embeddings, on device
    logit_scale: float


def top_labels(labels: Sequence[str], probs: Sequence[float], k: int) -> tuple[Scored, ...]:
    """The ``k`` most probable labels, best first (ties keep table order), scores to 4 places."""
    order = sorted(range(len(labels)), key=lambda i: -probs[i])[:k]
    return tuple(Scored(labels[i], round(float(probs[i]), 4)) for i in order)


def clip_input(image: Image.Image, max_ratio: int = MAX_ASPECT) -> Image.Image:
    """The image as RGB; of an extreme panorama only the middle, ``max_ratio`` times as long as wide.

    CLIP's preprocessing scales the short side to the model's size and keeps the centre square,
    so trimming the far ends changes nothing it sees, but stops a 2x100000 image from being
    resized to a multi-gigabyte array first.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    keep = min(width, height) * max_ratio
    if width > keep:
        left = (width - keep) // 2
        return rgb.crop((left, 0, left + keep, height))
    if height > keep:
        top = (height - keep) // 2
        return rgb.crop((0, top, width, top + keep))
    return rgb


def _normalized(embeddings: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, in float32."""
    return torch.nn.functional.normalize(embeddings.float(), dim=-1)


class ClipAnalyzer:
    """Zero-shot CLIP analysis over the configured label tables; loads lazily, thread-safe.

    ``gpu_lock`` (the daemon's lock shared with Ollama) is held only while the model works on
    the device: moving the weights there, encoding the labels, and each vision forward.
    """

    def __init__(
        self,
        settings: ClipSettings,
        cache_dir: Path,
        gpu_lock: contextlib.AbstractContextManager[object] | None = None,
    ) -> None:
        self._settings = settings
        self._cache_dir = cache_dir
        self._gpu_lock = gpu_lock
        self._tables: LabelTables = label_tables(settings.labels)
        self._lock = threading.RLock()
        self._state: _Loaded | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to share
        self.text_embeddings_computed = 0  # label sets encoded by the model, not read from cache

    @property
    def model_id(self) -> str:
        """The configured ``clip.model``: a hub id or a local folder."""
        return self._settings.model

    @property
    def device(self) -> str:
        """The device the model runs (or will run) on; the setting itself if it cannot resolve."""
        state = self._state
        if state is not None:
            return state.device
        try:
            return resolve_device(self._settings.device, torch.cuda.is_available())
        except (ClipUnavailableError, ConfigError):
            return self._settings.device

    @property
    def loaded(self) -> bool:
        """True while the model is in memory."""
        return self._state is not None

    @property
    def tables(self) -> Mapping[str, tuple[str, ...]]:
        """The label tables the images are scored against."""
        return self._tables

    def load(self) -> None:
        """Load the model and the label embeddings now (idempotent); raises ClipUnavailableError."""
        self._ensure_loaded()

    def release(self) -> None:
        """Drop the model and free its memory; the next analyze() loads it again."""
        with self._lock:
            state, self._state = self._state, None
        if state is not None:
            on_cuda = state.device.startswith("cuda")
            del state
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
            log.info("clip_released", model=self.model_id)

    def count_tokens(self, text: str) -> int:
        """CLIP tokens in ``text`` without the start/end markers (needs only the tokenizer)."""
        tokenizer = self._ensure_tokenizer()
        with self._tokenizer_lock:
            return len(tokenizer.tokenize(text))

    def analyze(self, images: Sequence[Image.Image]) -> list[Analysis]:
        """Per image, each table's top ``clip.labels.top_k`` labels with softmax scores."""
        if not images:
            return []
        state = self._ensure_loaded()
        top_k = self._settings.labels.top_k
        size = self._settings.batch_size
        results: list[Analysis] = []
        for start in range(0, len(images), size):
            chunk = [clip_input(img) for img in images[start : start + size]]
            pixels = state.processor(images=chunk, return_tensors="pt")["pixel_values"]
            probs = {name: p.tolist() for name, p in self._score(state, pixels).items()}
            for row in range(len(chunk)):
                results.append(
                    {
                        name: top_labels(labels, probs[name][row], top_k)
                        for name, labels in self._tables.items()
                    }
                )
        return results

    # --- loading ---------------------------------------------------------------------------

    def _gpu(self) -> contextlib.AbstractContextManager[object]:
        return self._gpu_lock if self._gpu_lock is not None else contextlib.nullcontext()

    def _ensure_tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer = self._tokenizer
        if tokenizer is not None:
            return tokenizer
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self._settings)
            return self._tokenizer

    def _ensure_loaded(self) -> _Loaded:
        state = self._state
        if state is not None:
            return state
        with self._lock:
            if self._state is None:
                self._state = self._load()
            return self._state

    def _load(self) -> _Loaded:
        started = time.perf_counter()
        device = resolve_device(self._settings.device, torch.cuda.is_available())
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        model, processor = load_model(self._settings, dtype)
        tokenizer = self._ensure_tokenizer()
        with self._gpu():
            move_to(model, device, dtype)
            text = self._label_embeddings(model, tokenizer, device, dtype)
        log.info(
            "clip_loaded",
            model=self.model_id,
            device=device,
            dtype=str(dtype).removeprefix("torch."),
            tables=len(text),
            seconds=round(time.perf_counter() - started, 2),
        )
        scale = float(model.logit_scale.detach().exp())
        return _Loaded(model, processor, device, dtype, text, scale)

    def _label_embeddings(
        self, model: CLIPModel, tokenizer: PreTrainedTokenizerBase, device: str, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """The tables' normalised text embeddings: from the cache, or encoded and cached."""
        identity = model_identity(self._settings.model, getattr(model.config, "_commit_hash", None))
        key = cache_key(identity, self._tables, str(dtype).removeprefix("torch."))
        embeddings = load_embeddings(self._cache_dir, key, self._tables)
        if embeddings is None:
            embeddings = {
                name: self._encode_labels(model, tokenizer, labels, device)
                for name, labels in self._tables.items()
            }
            self.text_embeddings_computed += 1
            save_embeddings(self._cache_dir, key, identity, self._tables, embeddings)
            log.info("clip_label_embeddings_computed", tables=len(embeddings), key=key[:12])
        return {name: matrix.to(device, torch.float32) for name, matrix in embeddings.items()}

    def _encode_labels(
        self,
        model: CLIPModel,
        tokenizer: PreTrainedTokenizerBase,
        labels: Sequence[str],
        device: str,
    ) -> torch.Tensor:
        width, max_length = dimensions(model)
        parts = []
        for start in range(0, len(labels), _TEXT_CHUNK):
            with self._tokenizer_lock:
                tokens = tokenizer(
                    list(labels[start : start + _TEXT_CHUNK]),
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
            with torch.inference_mode():
                output = model.get_text_features(
                    input_ids=tokens["input_ids"].to(device),
                    attention_mask=tokens["attention_mask"].to(device),
                )
                parts.append(_normalized(features(output, width)).cpu())
        return torch.cat(parts)

    # --- scoring ---------------------------------------------------------------------------

    def _score(self, state: _Loaded, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One vision forward for the chunk; per table, softmax probabilities on the CPU."""
        width = dimensions(state.model)[0]
        with self._gpu():
            try:
                with torch.inference_mode():
                    output = state.model.get_image_features(
                        pixel_values=pixels.to(state.device, state.dtype)
                    )
                    image = _normalized(features(output, width))
                    return {
                        name: (state.logit_scale * image @ text.T).softmax(dim=-1).cpu()
                        for name, text in state.text.items()
                    }
            except torch.cuda.OutOfMemoryError as exc:
                raise ClipUnavailableError(
                    "CLIP ran out of GPU memory: lower clip.batch_size or set clip.device to cpu"
                ) from exc
            finally:
                if state.device.startswith("cuda"):
                    torch.cuda.empty_cache()
