"""`promptd doctor`: check each thing promptd depends on and say what to do when it fails."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from daemon.config import Config
from daemon.errors import PromptdError

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    level: Level
    what: str
    detail: str
    fix: str = ""

    def render(self) -> str:
        """``[ ok ] what: detail`` plus an indented ``-> fix`` line when something is wrong."""
        mark = {"ok": " ok ", "warn": "warn", "fail": "FAIL"}[self.level]
        line = f"[{mark}] {self.what}: {self.detail}"
        return f"{line}\n       -> {self.fix}" if self.fix and self.level != "ok" else line


def run_checks(config: Config) -> Iterator[Check]:
    """Every check, in the order a person would fix things."""
    yield Check("ok", "config", str(config.source or "built-in defaults"))
    yield from check_inboxes(config)
    yield from check_ollama(config)
    yield from check_parallel(config, os.environ)
    yield from check_torch()
    yield from check_clip(config)
    yield from check_api(config)


def check_inboxes(config: Config) -> Iterator[Check]:
    """Each inbox exists (or can be created) and accepts new files."""
    for inbox in config.inbox:
        if not inbox.exists():
            yield Check(
                "warn", f"inbox {inbox}", "does not exist yet", f"mkdir -p {inbox} (run creates it)"
            )
            continue
        try:
            with tempfile.NamedTemporaryFile(dir=inbox, prefix=".promptd-doctor-"):
                pass
        except OSError as exc:
            yield Check(
                "fail",
                f"inbox {inbox}",
                f"not writable ({exc.strerror})",
                "give the promptd user write access to the folder (sidecars are written next to images)",
            )
        else:
            yield Check("ok", f"inbox {inbox}", "writable")


def check_ollama(config: Config) -> Iterator[Check]:
    """Ollama answers, each configured model is pulled, the vision model can see images."""
    from daemon.pipeline.compose.client import OllamaLLM

    llm = OllamaLLM(config.ollama)
    host = config.ollama.host
    try:
        version = llm.version()
        installed = set(llm.list_models())
    except PromptdError as exc:
        yield Check(
            "fail",
            "ollama",
            f"{host}: {exc.message}",
            "start it (`ollama serve` or `systemctl start ollama`), or set ollama.host / $OLLAMA_HOST; "
            "until then images get degraded `clip`-mode prompts",
        )
        return
    yield Check("ok", "ollama", f"{host} version {version}")
    models = config.ollama.models
    for role, name in (
        ("speed", models.speed),
        ("quality", models.quality),
        ("vision", models.vision),
    ):
        if _tagged(name) not in installed:
            yield Check("fail", f"model {role}", f"{name} is not pulled", f"ollama pull {name}")
            continue
        try:
            caps = llm.capabilities(name)
        except PromptdError as exc:
            yield Check("warn", f"model {role}", f"{name}: {exc.message}")
            continue
        if role == "vision" and "vision" not in caps:
            yield Check(
                "fail",
                "model vision",
                f"{name} cannot see images (capabilities: {', '.join(sorted(caps))})",
                "set ollama.models.vision to a vision model, e.g. gemma3:4b",
            )
        else:
            yield Check("ok", f"model {role}", f"{name} ({', '.join(sorted(caps))})")


def check_parallel(config: Config, environ: Mapping[str, str]) -> Iterator[Check]:
    """What ``ollama.parallel`` costs: each slot is a full context of VRAM, and Ollama must
    run as many slots (``OLLAMA_NUM_PARALLEL``, 1 by default since Ollama 0.9.7)."""
    n = config.ollama.parallel
    ctx = config.ollama.num_ctx
    context = f"num_ctx {ctx}" if ctx is not None else "the server's default num_ctx"
    if n == 1:
        yield Check(
            "ok",
            "ollama.parallel",
            "1 request at a time; more (ollama.parallel: N) needs OLLAMA_NUM_PARALLEL >= N in "
            f"Ollama's environment and VRAM for N full contexts ({context} each)",
        )
        return
    detail = (
        f"{n} requests in flight per model: Ollama allocates {n} x {context} of KV cache "
        "(each slot a full context), which on a small card pushes model layers to the CPU; "
        "more tokens/s in all, each image slower"
    )
    fix = (
        f"run Ollama with OLLAMA_NUM_PARALLEL={n} or more (otherwise the requests queue inside "
        f"Ollama); if `ollama ps` shows less than 100% GPU, lower ollama.parallel or num_ctx"
    )
    local = environ.get("OLLAMA_NUM_PARALLEL", "").strip()
    if local.isdigit() and int(local) < n:
        fix = f"OLLAMA_NUM_PARALLEL is {local} here, below {n}: " + fix
    yield Check("warn", "ollama.parallel", detail, fix)


def _tagged(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def check_api(config: Config, timeout_s: float = 1.0) -> Iterator[Check]:
    """Where `promptd run` serves the HTTP API, and whether that port answers or is free."""
    from daemon.config.apisettings import is_loopback, split_listen

    api = config.api
    if not api.enabled:
        yield Check("ok", "http api", "off (api.enabled: false)")
        return
    host, port = split_listen(api.listen)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    scope = "this machine only" if is_loopback(host) else "other machines too, with the token"
    if port == 0:
        yield Check("ok", "http api", f"listens on {host}, a free port ({scope})")
        return
    answer = _probe_health(host, port, timeout_s)
    if answer is None:
        yield Check(
            "ok", "http api", f"promptd run will listen on {url} ({scope}); review page at /"
        )
    elif '"promptd"' in answer:
        yield Check("ok", "http api", f"a running promptd answers at {url} ({scope})")
    else:
        yield Check(
            "fail",
            "http api",
            f"{url}: the port is taken by another program",
            "change api.listen in config.yaml, or set api.enabled: false",
        )


def _probe_health(host: str, port: int, timeout_s: float) -> str | None:
    """What ``GET /health`` answers on host:port (as text; "" when the port is open but says
    nothing), or None when nothing listens there."""
    import socket

    try:
        conn = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return None
    chunks: list[bytes] = []
    with conn:
        try:
            shown = f"[{host}]" if ":" in host else host
            conn.sendall(f"GET /health HTTP/1.0\r\nHost: {shown}:{port}\r\n\r\n".encode())
            while sum(len(c) for c in chunks) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError:
            pass  # connected, but no HTTP answer: someone else's port
    return b"".join(chunks).decode("utf-8", errors="replace")


def check_torch() -> Iterator[Check]:
    """Which device CLIP will use, and how much VRAM is free on it."""
    import torch

    if not torch.cuda.is_available():
        yield Check(
            "warn",
            "torch",
            f"{torch.__version__}, no CUDA device: CLIP runs on the CPU",
            "for a GPU, install a CUDA build of torch into the venv",
        )
        return
    free, total = torch.cuda.mem_get_info()
    name = torch.cuda.get_device_name()
    yield Check(
        "ok",
        "torch",
        f"{torch.__version__} on {name}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free",
    )


def check_clip(config: Config, loader: Callable[[Config], str] | None = None) -> Iterator[Check]:
    """The CLIP weights load (from the local cache or folder)."""
    try:
        device = (loader or _load_clip)(config)
    except PromptdError as exc:
        yield Check(
            "fail",
            "clip",
            exc.message,
            "set clip.model to a folder with the weights, or run once with network access",
        )
        return
    yield Check("ok", "clip", f"{config.clip.model} loads on {device}")


def _load_clip(config: Config) -> str:
    from daemon.config import cache_dir
    from daemon.pipeline.analyze.clip import ClipAnalyzer

    analyzer = ClipAnalyzer(config.clip, cache_dir(config))
    analyzer.load()
    return analyzer.device
