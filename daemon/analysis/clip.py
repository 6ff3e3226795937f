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
from typing import TYPE_CHECKING, Any, cast

import structlog
import torch
from PIL import Image
from safetensors import SafetensorError

from ..config import ClipSettings
from ..errors import ConfigError, TransientError
from ..jobs import Analysis, Scored
from .cache import cache_key, load_embeddings, model_identity, save_embeddings
from .labels import LabelTables, label_tables

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerBase

log = structlog.get_logger(__name__)

# What from_pretrained raises for a missing, partial or damaged model (no network, no cache,
# a folder without weights, a corrupt safetensors or config file).
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError)
_MIN_VOCAB = 256  # a byte-level BPE knows at least every byte
_TEXT_CHUNK = 256  # labels per text-encoder pass when (re)building the cache


class ClipUnavailableError(TransientError):
    """The CLIP model cannot be loaded or run right now (missing weights, no network, no GPU)."""


@dataclass(frozen=True)
class _Loaded:
    """A loaded model with everything analyze() needs; replaced as a whole, never mutated."""

    model: CLIPModel
    processor: Any  # an image processor: __call__(images=..., return_tensors="pt")
    device: str
    dtype: torch.dtype
    text: Mapping[str, torch.Tensor]  # table -> normalised float32 label embeddings, on device
    logit_scale: float


def resolve_device(requested: str, cuda_available: bool) -> str:
    """The torch device for ``clip.device``: auto picks cuda when there is one, else cpu."""
    name = requested.strip().lower()
    if name == "auto":
        return "cuda" if cuda_available else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not cuda_available:
            raise ClipUnavailableError(
                f"clip.device is {requested!r} but torch sees no CUDA device: "
                "set clip.device to auto or cpu in config.yaml, or install a CUDA build of torch"
            )
        return name
    raise ConfigError(f"clip.device {requested!r} is not one of auto, cpu, cuda, cuda:N")


def looks_like_path(model: str) -> bool:
    """True when ``clip.model`` names a folder rather than a hub id such as ``org/name``."""
    return (
        model.startswith(("/", ".", "~"))
        or "\\" in model
        or model.count("/") > 1
        or Path(model).is_absolute()
    )


def top_labels(labels: Sequence[str], probs: Sequence[float], k: int) -> tuple[Scored, ...]:
    """The ``k`` most probable labels, best first (ties keep table order), scores to 4 places."""
    order = sorted(range(len(labels)), key=lambda i: -probs[i])[:k]
    return tuple(Scored(labels[i], round(float(probs[i]), 4)) for i in order)


def features(output: object, width: int) -> torch.Tensor:
    """The projected embeddings from get_text_features/get_image_features.

    transformers < 5 returns a tensor; 5.x returns an output object whose ``pooler_output``
    holds the projection. Anything else of the wrong width means an incompatible version.
    """
    found = output if isinstance(output, torch.Tensor) else None
    for name in ("text_embeds", "image_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if found is None and isinstance(value, torch.Tensor):
            found = value
    if found is None or found.ndim != 2 or found.shape[-1] != width:
        raise ClipUnavailableError(
            f"this transformers version returned CLIP features of an unexpected shape "
            f"({type(output).__name__}); install transformers >= 4.45"
        )
    return found


def _dimensions(model: CLIPModel) -> tuple[int, int]:
    """The embedding width (projection_dim) and the longest label in tokens the model takes."""
    config: Any = model.config
    return int(config.projection_dim), int(config.text_config.max_position_embeddings)


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
        return len(self._ensure_tokenizer().tokenize(text))

    def analyze(self, images: Sequence[Image.Image]) -> list[Analysis]:
        """Per image, each table's top ``clip.labels.top_k`` labels with softmax scores."""
        if not images:
            return []
        state = self._ensure_loaded()
        top_k = self._settings.labels.top_k
        size = self._settings.batch_size
        results: list[Analysis] = []
        for start in range(0, len(images), size):
            chunk = [
                img if img.mode == "RGB" else img.convert("RGB")
                for img in images[start : start + size]
            ]
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

    def _source(self) -> tuple[str, bool]:
        """What to pass to from_pretrained, and whether to stay off the network."""
        model = self._settings.model
        folder = Path(model).expanduser()
        if folder.is_dir():
            return str(folder), True
        if looks_like_path(model):
            raise ClipUnavailableError(
                f"CLIP model folder {model!r} does not exist: set clip.model in config.yaml to a "
                "folder saved with save_pretrained (config.json, model.safetensors, tokenizer and "
                "preprocessor files) or to a hub id such as openai/clip-vit-base-patch32",
                folder,
            )
        return model, self._settings.offline

    def _unavailable(self, exc: BaseException) -> ClipUnavailableError:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        folder = Path(self._settings.model).expanduser()
        return ClipUnavailableError(
            f"CLIP model {self._settings.model!r} could not be loaded ({reason}): set clip.model "
            "in config.yaml to a local folder with the weights, or allow the download once "
            "(clip.offline: false, with network access)",
            folder if folder.is_dir() else None,
        )

    def _ensure_tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer = self._tokenizer
        if tokenizer is not None:
            return tokenizer
        with self._lock:
            if self._tokenizer is None:
                from transformers import CLIPTokenizer

                source, local_only = self._source()
                try:
                    loaded = CLIPTokenizer.from_pretrained(source, local_files_only=local_only)
                except _LOAD_ERRORS as exc:
                    raise self._unavailable(exc) from exc
                if len(loaded) < _MIN_VOCAB:  # transformers 5 builds an empty one from no files
                    raise self._unavailable(
                        OSError("no tokenizer vocabulary (vocab.json/tokenizer.json) found")
                    )
                self._tokenizer = loaded
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
        from transformers import AutoImageProcessor, CLIPModel

        started = time.perf_counter()
        device = resolve_device(self._settings.device, torch.cuda.is_available())
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        source, local_only = self._source()
        try:
            model = CLIPModel.from_pretrained(source, dtype=dtype, local_files_only=local_only)
            processor = cast(Any, AutoImageProcessor).from_pretrained(
                source, local_files_only=local_only
            )
        except _LOAD_ERRORS as exc:
            raise self._unavailable(exc) from exc
        cast(Any, model).eval().requires_grad_(False)
        tokenizer = self._ensure_tokenizer()
        with self._gpu():
            try:
                cast(Any, model).to(device=device, dtype=dtype)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                raise ClipUnavailableError(
                    f"CLIP could not be moved to {device} ({exc}): free GPU memory or set "
                    "clip.device to cpu in config.yaml"
                ) from exc
            text = self._label_embeddings(model, tokenizer, device, dtype)
        log.info(
            "clip_loaded",
            model=self.model_id,
            device=device,
            dtype=str(dtype).removeprefix("torch."),
            tables=len(text),
            seconds=round(time.perf_counter() - started, 2),
        )
        return _Loaded(
            model, processor, device, dtype, text, float(model.logit_scale.detach().exp())
        )

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
        width, max_length = _dimensions(model)
        parts = []
        for start in range(0, len(labels), _TEXT_CHUNK):
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
        width = _dimensions(state.model)[0]
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
