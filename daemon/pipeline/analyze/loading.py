"""Loading a CLIP from a hub id or a local folder, with errors that say which setting to fix.

transformers is imported only when something is loaded, so importing promptd stays fast.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import torch
from safetensors import SafetensorError

from daemon.config import ClipSettings
from daemon.errors import ConfigError, TransientError

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerBase

# What from_pretrained raises for a missing, partial or damaged model (no network, no cache,
# a folder without weights, a corrupt safetensors or config file).
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError)
MIN_VOCAB = 256  # a byte-level BPE knows at least every byte


class ClipUnavailableError(TransientError):
    """The CLIP model cannot be loaded or run right now (missing weights, no network, no GPU)."""


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


def model_source(settings: ClipSettings) -> tuple[str, bool]:
    """What to pass to from_pretrained, and whether to stay off the network.

    A folder is always loaded offline; a hub id only with ``clip.offline``. A path that does not
    exist raises ClipUnavailableError rather than being mistaken for a hub id.
    """
    folder = Path(settings.model).expanduser()
    if folder.is_dir():
        return str(folder), True
    if looks_like_path(settings.model):
        raise ClipUnavailableError(
            f"CLIP model folder {settings.model!r} does not exist: set clip.model in config.yaml "
            "to a folder saved with save_pretrained (config.json, model.safetensors, tokenizer "
            "and preprocessor files) or to a hub id such as openai/clip-vit-base-patch32",
            folder,
        )
    return settings.model, settings.offline or not hub_reachable(os.environ)


_PROBE_TTL_S = 60.0
_probes: dict[tuple[str, int], tuple[float, bool]] = {}


def hub_reachable(environ: Mapping[str, str], timeout_s: float = 3.0) -> bool:
    """Whether the model hub answers a TCP connect; if not, load from the local cache only.

    Without this check, from_pretrained retries every file with backoff for minutes on a
    machine with no network before it looks in the cache.
    """
    if environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlsplit(environ.get("HF_ENDPOINT") or "https://huggingface.co")
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    seen = _probes.get(address)
    if seen is not None and time.monotonic() - seen[0] < _PROBE_TTL_S:
        return seen[1]  # the tokenizer and the model load a moment apart: probe once
    try:
        with socket.create_connection(address, timeout=timeout_s):
            reachable = True
    except OSError:
        reachable = False
    _probes[address] = (time.monotonic(), reachable)
    return reachable


def unavailable(settings: ClipSettings, exc: BaseException) -> ClipUnavailableError:
    """The error for a model that failed to load, naming clip.model and what to do."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    folder = Path(settings.model).expanduser()
    return ClipUnavailableError(
        f"CLIP model {settings.model!r} could not be loaded ({reason}): set clip.model in "
        "config.yaml to a local folder with the weights, or allow the download once "
        "(clip.offline: false, with network access)",
        folder if folder.is_dir() else None,
    )


def load_tokenizer(settings: ClipSettings) -> PreTrainedTokenizerBase:
    """The model's CLIP tokenizer alone (no weights); raises ClipUnavailableError."""
    from transformers import CLIPTokenizer

    source, local_only = model_source(settings)
    try:
        tokenizer: PreTrainedTokenizerBase = CLIPTokenizer.from_pretrained(
            source, local_files_only=local_only
        )
    except LOAD_ERRORS as exc:
        raise unavailable(settings, exc) from exc
    if len(tokenizer) < MIN_VOCAB:  # transformers 5 builds an empty one from no files
        raise unavailable(settings, OSError("no tokenizer vocabulary (vocab.json) found"))
    return tokenizer


def load_model(settings: ClipSettings, dtype: torch.dtype) -> tuple[CLIPModel, Any]:
    """The CLIP model (in eval mode, on the CPU) and its image processor."""
    from transformers import AutoImageProcessor, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # keeps the journal clean

    source, local_only = model_source(settings)
    try:
        model = CLIPModel.from_pretrained(source, dtype=dtype, local_files_only=local_only)
        processor = cast(Any, AutoImageProcessor).from_pretrained(
            source, local_files_only=local_only
        )
    except LOAD_ERRORS as exc:
        raise unavailable(settings, exc) from exc
    cast(Any, model).eval().requires_grad_(False)
    return model, processor


def move_to(model: CLIPModel, device: str, dtype: torch.dtype) -> None:
    """Put the weights on ``device``; a device that cannot take them is ClipUnavailableError."""
    try:
        cast(Any, model).to(device=device, dtype=dtype)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        raise ClipUnavailableError(
            f"CLIP could not be moved to {device} ({exc}): free GPU memory or set "
            "clip.device to cpu in config.yaml"
        ) from exc


def dimensions(model: CLIPModel) -> tuple[int, int]:
    """The embedding width (projection_dim) and the most text tokens the model takes."""
    config: Any = model.config
    return int(config.projection_dim), int(config.text_config.max_position_embeddings)


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
