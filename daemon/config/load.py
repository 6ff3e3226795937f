"""Loading config.yaml: read it with line numbers, validate it against the settings models,
and complete it from the environment (paths made absolute, XDG and systemd folders, $OLLAMA_HOST).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from daemon.config.settings import Config
from daemon.config.yamlfile import load_yaml, ordered, problem, summarise, validation_problems
from daemon.errors import ConfigError

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
DEEP_THINKING = "must be true (mode: quality) or false (mode: speed)"


def without_invalid_deep_thinking(section: dict[Any, Any]) -> tuple[dict[Any, Any], bool]:
    """``section`` minus a non-boolean ``deep_thinking`` (so its other keys still get checked)."""
    if "deep_thinking" in section and not isinstance(section["deep_thinking"], bool):
        return {k: v for k, v in section.items() if k != "deep_thinking"}, True
    return section, False


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """$PROMPTD_CONFIG, else ./config.yaml, else $XDG_CONFIG_HOME/promptd/config.yaml; None: defaults."""
    explicit = environ.get("PROMPTD_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("config.yaml")
    if local.is_file():
        return local
    user = _xdg_dir(environ, "XDG_CONFIG_HOME", ".config") / "promptd" / "config.yaml"
    return user if user.is_file() else None


def load_config(path: Path | None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read, validate and complete config.yaml; ``None`` means the built-in defaults.

    Relative paths are taken from the file's folder (the working directory without a file),
    unset ``ollama.host``, ``cache_dir`` and ``state_dir`` get their environment defaults.
    Raises ConfigError listing every problem with its file, line and dotted path.
    """
    if path is None:
        return _complete(Config.model_validate({}), Path.cwd(), None, environ)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        message = (
            f"config file {what}; create it (see config.yaml in promptd's source) or pass --config"
        )
        raise ConfigError(message, path, (f"{path}: {message}",))
    doc = load_yaml(path)
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        message = f"expected a mapping of settings at the top, got {type(data).__name__}"
        raise ConfigError(message, path, (f"{path}:1: {message}",))
    problems = list(doc.problems)
    if "source" in data:
        line = doc.line_of(("source",))
        problems.append(problem(str(path), line, ("source",), "set by promptd itself; remove it"))
        data = {k: v for k, v in data.items() if k != "source"}
    defaults = data.get("defaults")
    if isinstance(defaults, dict):
        kept, invalid = without_invalid_deep_thinking(defaults)
        if invalid:
            line = doc.line_of(("defaults", "deep_thinking"))
            problems.append(problem(str(path), line, ("defaults", "deep_thinking"), DEEP_THINKING))
            data = {**data, "defaults": kept}
    config: Config | None = None
    try:
        config = Config.model_validate(_drop_empty_sections(data, Config))
    except ValidationError as exc:
        problems.extend(validation_problems(exc, doc, Config))
    if problems or config is None:
        found = ordered(problems, str(path))
        raise ConfigError(summarise(found, str(path)), path, found)
    resolved = path.resolve()
    return _complete(config, resolved.parent, resolved, environ)


def _systemd_dir(environ: Mapping[str, str], name: str) -> Path | None:
    """The first folder systemd lists in ``$name`` (colon-separated, absolute), if any."""
    first = environ.get(name, "").split(":")[0]
    return Path(first) if first.startswith("/") else None


def _complete(
    config: Config, base: Path, source: Path | None, environ: Mapping[str, str]
) -> Config:
    """Fill in what the file leaves to the environment and make every path absolute."""
    # Under systemd, CacheDirectory=/StateDirectory= hand us $CACHE_DIRECTORY/$STATE_DIRECTORY.
    cache_dir = (
        _absolute(config.cache_dir, base, environ)
        if config.cache_dir is not None
        else _systemd_dir(environ, "CACHE_DIRECTORY")
        or _xdg_dir(environ, "XDG_CACHE_HOME", ".cache") / "promptd"
    )
    state_dir = (
        _absolute(config.state_dir, base, environ)
        if config.state_dir is not None
        else _systemd_dir(environ, "STATE_DIRECTORY") or cache_dir
    )
    host = config.ollama.host or environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST
    model = config.clip.model
    if model.startswith(("./", "../", "~")) or (
        not Path(model).is_absolute() and (base / model).is_dir()
    ):
        model = str(_absolute(Path(model), base, environ))
    api = config.api
    if api.save_to is not None:
        api = api.model_copy(update={"save_to": _absolute(api.save_to, base, environ)})
    vocabularies = {
        name: source
        if source in ("builtin", "off")
        else str(_absolute(Path(source), base, environ))
        for name, source in config.clip.vocabularies.items()
    }
    return config.model_copy(
        update={
            "api": api,
            "inbox": tuple(_absolute(p, base, environ) for p in config.inbox),
            "cache_dir": cache_dir,
            "state_dir": state_dir,
            "ollama": config.ollama.model_copy(update={"host": host}),
            "clip": config.clip.model_copy(update={"model": model, "vocabularies": vocabularies}),
            "source": source,
        }
    )


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def _absolute(path: Path, base: Path, environ: Mapping[str, str]) -> Path:
    """``~`` expanded from $HOME, relative paths taken from ``base``, then made canonical."""
    parts = path.parts
    if parts and parts[0] == "~":
        path = _home(environ).joinpath(*parts[1:])
    elif parts and parts[0].startswith("~"):
        with contextlib.suppress(RuntimeError):  # ~user for an unknown user: a plain name
            path = path.expanduser()
    return (base / path).resolve()


def _xdg_dir(environ: Mapping[str, str], variable: str, fallback: str) -> Path:
    """An XDG base directory; unset or relative values fall back to ~/<fallback> (per the spec)."""
    value = environ.get(variable, "")
    return Path(value) if value and Path(value).is_absolute() else _home(environ) / fallback


def _drop_empty_sections(data: dict[Any, Any], model: type[BaseModel]) -> dict[Any, Any]:
    """A section left empty (all its keys commented out) means its defaults, not an error."""
    result: dict[Any, Any] = {}
    for key, value in data.items():
        field = model.model_fields.get(str(key))
        nested = field.annotation if field is not None else None
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            if value is None:
                continue
            if isinstance(value, dict):
                value = _drop_empty_sections(value, nested)
        result[key] = value
    return result


def cache_dir(config: Config) -> Path:
    """Where text embeddings (and, unless state_dir is set, the status file) live; the loader
    fills in the XDG or systemd default, this covers a Config built without it."""
    return config.cache_dir or Path.home() / ".cache" / "promptd"
