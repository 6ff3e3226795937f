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
from daemon.pipeline.analyze.cache import model_identity
from daemon.pipeline.analyze.edges import MAX_ASPECT, clip_input, top_labels
from daemon.pipeline.analyze.interrogate import Interrogator
from daemon.pipeline.analyze.labels import LabelTables, label_tables
from daemon.pipeline.analyze.loading import (
    ClipUnavailableError,
    dimensions,
    features,
    load_model,
    move_to,
    resolve_device,
)
from daemon.pipeline.analyze.textenc import cached_tables, encode_texts, normalized
from daemon.pipeline.analyze.tokens import Tokens
from daemon.records import Analysis, Analyzed

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerBase

__all__ = ["MAX_ASPECT", "ClipAnalyzer", "ClipUnavailableError", "clip_input", "top_labels"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Loaded:
    """A loaded model with everything analyze() needs; replaced as a whole, never mutated."""

    model: CLIPModel
    processor: Any  # an image processor: __call__(images=..., return_tensors="pt")
    device: str
    dtype: torch.dtype
    text: Mapping[str, torch.Tensor]  # table -> normalised float32 label embeddings, on device
    logit_scale: float


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
        self._tokens = Tokens(settings)
        self.text_embeddings_computed = 0  # text sets encoded by the model, not read from cache
        self._interrogator: tuple[_Loaded, Interrogator] | None = None

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
            self._interrogator = None
        if state is not None:
            on_cuda = state.device.startswith("cuda")
            del state
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
            log.info("clip_released", model=self.model_id)

    @property
    def settings(self) -> ClipSettings:
        """The ``clip`` section this analyzer was built from."""
        return self._settings

    @property
    def cache_dir(self) -> Path:
        """Where text embeddings are cached."""
        return self._cache_dir

    def count_tokens(self, text: str) -> int:
        """CLIP tokens in ``text`` without the start/end markers (needs only the tokenizer)."""
        return self._tokens.count(text)

    def token_ids(self, texts: Sequence[str], *, markers: bool = False) -> list[list[int]]:
        """Each text's token ids, with the start and end markers or without (the tokenizer only)."""
        return self._tokens.ids(texts, markers=markers)

    def analyze(self, images: Sequence[Image.Image]) -> list[Analysis]:
        """Per image, each table's top ``clip.labels.top_k`` labels with softmax scores."""
        return [seen.analysis for seen in self.analyze_embedded(images)]

    def analyze_embedded(self, images: Sequence[Image.Image]) -> list[Analyzed]:
        """``analyze``, each analysis with the image embedding it came from (no extra work)."""
        if not images:
            return []
        state = self._ensure_loaded()
        top_k = self._settings.labels.top_k
        size = self._settings.batch_size
        results: list[Analyzed] = []
        for start in range(0, len(images), size):
            chunk = [clip_input(img) for img in images[start : start + size]]
            pixels = state.processor(images=chunk, return_tensors="pt")["pixel_values"]
            scores, embeddings = self._score(state, pixels)
            probs = {name: p.tolist() for name, p in scores.items()}
            for row in range(len(chunk)):
                analysis = {
                    name: top_labels(labels, probs[name][row], top_k)
                    for name, labels in self._tables.items()
                }
                results.append(Analyzed(analysis, embeddings[row]))
        return results

    @property
    def interrogator(self) -> Interrogator | None:
        """The clip_prompt builder of the loaded model, once one was asked for."""
        held = self._interrogator
        return held[1] if held is not None else None

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised float32 CPU text embeddings, one row per text (the GPU lock per chunk)."""
        state = self._ensure_loaded()
        return encode_texts(
            state.model,
            self._tokens.tokenizer(),
            texts,
            state.device,
            tokenizer_lock=self._tokens.lock,
            gpu=self.gpu,
        )

    def clip_prompt(self, caption: str, embedding: torch.Tensor) -> str:
        """The CLIP-Interrogator-style prompt for an image (see ``interrogate``)."""
        state = self._ensure_loaded()
        with self._lock:
            held = self._interrogator
            if held is None or held[0] is not state:
                held = (state, Interrogator(self, state.model, state.dtype))
                self._interrogator = held
        return held[1].prompt(caption, embedding)

    # --- loading ---------------------------------------------------------------------------

    def gpu(self) -> contextlib.AbstractContextManager[object]:
        """The GPU lock shared with Ollama, for every forward pass (a no-op without one, and
        on the CPU, where CLIP takes nothing from the LLM's GPU and may run beside it)."""
        if self._gpu_lock is None or self.device == "cpu":
            return contextlib.nullcontext()
        return self._gpu_lock

    def forward_turn(self) -> contextlib.AbstractContextManager[object]:
        """The turn for one batch's forward pass: the GPU lock, or on the CPU the lock's
        ``cpu_turn`` (no turn taken, interactive requests still first) where it has one."""
        if self._gpu_lock is not None and self.device == "cpu":
            cpu_turn = getattr(self._gpu_lock, "cpu_turn", None)
            if callable(cpu_turn):
                turn: contextlib.AbstractContextManager[object] = cpu_turn()
                return turn
        return self.gpu()

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
        tokenizer = self._tokens.tokenizer()
        with self.gpu():
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

        def encode(labels: Sequence[str]) -> torch.Tensor:
            return encode_texts(model, tokenizer, labels, device, tokenizer_lock=self._tokens.lock)

        embeddings, computed = cached_tables(
            self._cache_dir, self.identity(model), self._tables, dtype, encode
        )
        self.text_embeddings_computed += computed
        return {name: matrix.to(device, torch.float32) for name, matrix in embeddings.items()}

    def identity(self, model: CLIPModel | None = None) -> str:
        """What makes this model's text embeddings differ from another's (the cache key)."""
        model = model if model is not None else self._ensure_loaded().model
        return model_identity(self._settings.model, getattr(model.config, "_commit_hash", None))

    # --- scoring ---------------------------------------------------------------------------

    def _score(
        self, state: _Loaded, pixels: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One vision forward for the chunk: per table, softmax probabilities on the CPU, and
        the normalised image embeddings (CPU, float32)."""
        width = dimensions(state.model)[0]
        with self.forward_turn():
            try:
                with torch.inference_mode():
                    output = state.model.get_image_features(
                        pixel_values=pixels.to(state.device, state.dtype)
                    )
                    image = normalized(features(output, width))
                    scores = {
                        name: (state.logit_scale * image @ text.T).softmax(dim=-1).cpu()
                        for name, text in state.text.items()
                    }
                    return scores, image.cpu()
            except torch.cuda.OutOfMemoryError as exc:
                raise ClipUnavailableError(
                    "CLIP ran out of GPU memory: lower clip.batch_size or set clip.device to cpu"
                ) from exc
            finally:
                if state.device.startswith("cuda"):
                    torch.cuda.empty_cache()
