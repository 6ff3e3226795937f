"""Per-folder rules: ``.promptd.yaml`` files cascading from an inbox root down to an image.

Like ``.editorconfig``: start from ``defaults`` in config.yaml, then apply every rule file
from the inbox root down to the image's folder, key by key; the nearest file wins. Each
file is validated on its own, so a problem is reported against the file that has it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from daemon.config.load import DEEP_THINKING, without_invalid_deep_thinking
from daemon.config.settings import Config, Mode, OllamaModels, RuleSettings
from daemon.config.vocabulary import VOCABULARY_DEFAULTS
from daemon.config.yamlfile import load_yaml, ordered, problem, summarise, validation_problems
from daemon.config.yamlguard import RULE_FILE_LIMITS
from daemon.errors import ConfigError, ImageError
from daemon.fs.names import RULE_FILE, is_ignored_name
from daemon.records import EffectiveRule

FINGERPRINT_VERSION = 1  # bump when a code change alters the output for the same settings


def parse_rule_file(path: Path) -> dict[str, Any]:
    """The settings one rule file sets, validated on their own; ConfigError lists every problem.

    The file is untrusted (anyone who can write to a shared inbox can write one): it is read
    within ``RULE_FILE_LIMITS`` (64 KB, a few thousand values, 8 aliases, 20 levels).
    """
    doc = load_yaml(path, limits=RULE_FILE_LIMITS)
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        message = f"expected a mapping of rule settings, got {type(data).__name__}"
        raise ConfigError(message, path, (f"{path}:1: {message}",))
    problems = list(doc.problems)
    data, invalid = without_invalid_deep_thinking(data)
    if invalid:
        line = doc.line_of(("deep_thinking",))
        problems.append(problem(doc.name, line, ("deep_thinking",), DEEP_THINKING))
    settings: RuleSettings | None = None
    try:
        settings = RuleSettings.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, doc, RuleSettings))
    if problems or settings is None:
        found = ordered(problems, doc.name)
        raise ConfigError(summarise(found, doc.name), path, found)
    # deep_thinking has become `mode` (unless the file also sets `mode`, which wins).
    return {key: getattr(settings, key) for key in settings.model_fields_set}


def fingerprint_for(settings: RuleSettings, config: Config) -> str:
    """sha256 of everything that shapes an image's sidecars; equal means up to date."""
    labels = config.clip.labels
    document: dict[str, Any] = {
        "version": FINGERPRINT_VERSION,
        "settings": settings.model_dump(mode="json"),
        "clip_model": config.clip.model,
        "labels": {
            "replace": labels.replace,
            "top_k": labels.top_k,
            "tables": [[category, list(names)] for category, names in labels.tables.items()],
        },
        "llm": llm_model(settings.mode, config.ollama.models),
    }
    if wants_clip_prompt(settings):  # the phrase tables and the chain shape the record too
        clip = config.clip
        document["vocabularies"] = {**VOCABULARY_DEFAULTS, **clip.vocabularies}
        document["chain"] = [clip.chain_steps, clip.chain_width]
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def wants_clip_prompt(settings: RuleSettings) -> bool:
    """Whether an image under ``settings`` gets a clip_prompt (asked for, or the .txt uses it)."""
    return settings.clip_prompt or settings.caption_from == "clip_prompt"


def llm_model(mode: Mode, models: OllamaModels) -> str | None:
    """The Ollama model that serves ``mode`` (None for ``clip``, which uses no LLM)."""
    return None if mode == "clip" else str(getattr(models, mode))


@dataclass(frozen=True)
class _Parsed:
    signature: tuple[int, int]  # (st_mtime_ns, st_size) of the file when it was parsed
    overrides: Mapping[str, Any] | None  # None when the file is invalid
    error: ConfigError | None = None


class RuleResolver:
    """Finds the inbox an image belongs to and the settings its folder's rule files give it.

    Parsed rule files are cached by path and (mtime, size), so an edited file is picked up
    on the next ``resolve`` with no explicit invalidation; a folder without one costs a stat.
    Safe to share between threads: the worst a race costs is parsing a file twice.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        # Outermost first: an inbox nested in another takes part in the outer one's cascade.
        resolved = {root.resolve() for root in config.inbox}
        self._roots = tuple(sorted(resolved, key=lambda root: len(root.parts)))
        self._cache: dict[Path, _Parsed] = {}

    @property
    def roots(self) -> tuple[Path, ...]:
        """The inbox folders, resolved, outermost first."""
        return self._roots

    def root_of(self, path: Path) -> Path | None:
        """The inbox root holding ``path`` after resolving symlinks; None when outside all."""
        found = self.locate(path)
        return found[0] if found is not None else None

    def resolve(self, image: Path) -> EffectiveRule:
        """The settings for ``image``; ConfigError when a rule file on its way is invalid."""
        found = self.locate(image)
        if found is None:
            raise ImageError("outside every inbox folder (or a symlink leading out)", image)
        root, resolved = found
        parts = resolved.parent.relative_to(root).parts if resolved != root else ()
        folders = [root.joinpath(*parts[:depth]) for depth in range(len(parts) + 1)]
        merged = self._config.defaults.model_dump()
        sources = [self._config.source] if self._config.source is not None else []
        for rule_path in (f / RULE_FILE for f in folders):
            overrides = self._rule(rule_path)
            if overrides is not None:
                merged.update(overrides)
                sources.append(rule_path)
        try:
            settings = RuleSettings.model_validate(merged)
        except ValidationError as exc:  # each file passed alone; the mix should too
            where = sources[-1] if sources else None
            problems = tuple(f"{where}: {e['msg']}" for e in exc.errors())
            raise ConfigError("the combined rule is invalid", where, problems) from exc
        return EffectiveRule(settings, tuple(sources), fingerprint_for(settings, self._config))

    def origin_of(self, folder: Path, key: str) -> tuple[Path, Any] | None:
        """Which folder's rule sets ``key`` for the images in ``folder``, and to what.

        The nearest rule file that sets the key wins; failing that, the inbox root when
        config.yaml's ``defaults`` set it; None when nothing sets it (the built-in default
        applies). An invalid rule file on the way is passed over. ``folder`` need not exist.
        """
        found = self.locate(folder)
        if found is None:
            return None
        root, resolved = found
        parts = resolved.relative_to(root).parts
        for depth in range(len(parts), -1, -1):
            candidate = root.joinpath(*parts[:depth])
            value = self.setting_in(candidate, key)
            if value is not None:
                return candidate, value[0]
        if key in self._config.defaults.model_fields_set:
            return root, getattr(self._config.defaults, key)
        return None

    def setting_in(self, folder: Path, key: str) -> tuple[Any] | None:
        """``(value,)`` when ``folder``'s own rule file sets ``key``; None when it has no rule
        file, does not set the key, or the file is invalid."""
        try:
            overrides = self._rule(folder / RULE_FILE)
        except ConfigError:
            return None
        return (overrides[key],) if overrides is not None and key in overrides else None

    def locate(self, path: Path) -> tuple[Path, Path] | None:
        """(inbox root, resolved path), comparing resolved paths so no symlink leads out."""
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return None
        for root in self._roots:
            if resolved == root or root in resolved.parents:
                return root, resolved
        return None

    def _rule(self, path: Path) -> Mapping[str, Any] | None:
        """A rule file's settings from the cache or the disk; None when there is none."""
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            self._cache.pop(path, None)
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read the rule file: {exc.strerror or exc}", path) from exc
        signature = (st.st_mtime_ns, st.st_size)
        parsed = self._cache.get(path)
        if parsed is None or parsed.signature != signature:
            try:
                parsed = _Parsed(signature, parse_rule_file(path))
            except ConfigError as exc:
                parsed = _Parsed(signature, None, exc)
            self._cache[path] = parsed
        if parsed.error is not None:
            error = parsed.error
            raise ConfigError(error.message, path, error.problems)
        return parsed.overrides


def rule_files_under(root: Path, ignore: Iterable[str] = ()) -> Iterator[Path]:
    """Every rule file under ``root``, parents first; hidden, NAS and ignored folders skipped."""
    patterns = tuple(ignore)
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored_name(d, patterns))
        if RULE_FILE in filenames:
            yield Path(folder) / RULE_FILE


def check_all(config: Config) -> tuple[list[str], list[str]]:
    """(problems, warnings) for every rule file under every inbox; config.yaml is checked on load."""
    problems: list[str] = []
    warnings: list[str] = []
    seen: set[Path] = set()
    for root in config.inbox:
        if not root.exists():
            warnings.append(f"warning: inbox {root} does not exist (it will be created on start)")
            continue
        if not root.is_dir():
            problems.append(f"{root}: the inbox is not a folder; point `inbox` at a folder")
            continue
        for other in config.inbox:
            if root != other and root.resolve() in other.resolve().parents:
                warnings.append(f"warning: inbox {other} is inside inbox {root}; its rules apply")
        for path in rule_files_under(root, config.images.ignore):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                parse_rule_file(path)
            except ConfigError as exc:
                problems.extend(exc.problems)
    return problems, warnings
