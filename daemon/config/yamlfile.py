"""YAML files with line numbers, and validation problems phrased against them.

``load_yaml`` parses like ``yaml.safe_load`` but also records the line of every mapping
key and sequence item, so a pydantic ``ValidationError`` can be reported as
``FILE:LINE: dotted.path: message``, every problem at once. The file is untrusted: its size,
nesting, aliases and expanded size are bounded (``yamlguard``) before anything is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from daemon.config.yamlguard import (
    CONFIG_LIMITS,
    BoundedLoader,
    YamlLimitError,
    YamlLimits,
    check_expansion,
    check_size,
    read_capped,
)
from daemon.errors import ConfigError

Loc = tuple[str | int, ...]  # mapping keys as str, sequence indices as int


@dataclass(frozen=True)
class YamlDocument:
    """Parsed YAML data, the 1-based line of each key, and structural problems (duplicate keys)."""

    name: str  # how problems name the file
    data: Any
    lines: Mapping[Loc, int]
    problems: tuple[str, ...] = ()

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its nearest ancestor the YAML spells out."""
        key = _normalise(loc)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return None


def problem(name: str, line: int | None, loc: Loc, message: str) -> str:
    """One problem line: ``FILE:LINE: dotted.path: message`` (parts left out when unknown)."""
    where = f"{name}:{line}" if line is not None else name
    dotted = ".".join(str(part) for part in loc)
    return f"{where}: {dotted}: {message}" if dotted else f"{where}: {message}"


def load_yaml(
    path: Path, name: str | None = None, limits: YamlLimits = CONFIG_LIMITS
) -> YamlDocument:
    """Read and parse ``path`` within ``limits``; an unreadable, oversized or invalid file
    raises ConfigError."""
    label = name if name is not None else str(path)
    try:
        text = read_capped(path, limits).decode("utf-8-sig")
    except YamlLimitError as exc:
        raise _limit_error(exc, label, path) from None
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        raise ConfigError(message, path, (f"{label}: {message}",)) from exc
    except OSError as exc:
        message = f"cannot read the file: {exc.strerror or exc}"
        raise ConfigError(message, path, (f"{label}: {message}",)) from exc
    return parse_yaml(text, label, path, limits)


def parse_yaml(
    text: str, name: str, path: Path | None = None, limits: YamlLimits = CONFIG_LIMITS
) -> YamlDocument:
    """Parse YAML text with safe_load semantics within ``limits``; a syntax error or a limit
    raises ConfigError with its line."""
    loader: BoundedLoader | None = None
    try:
        check_size(text, limits)
        loader = BoundedLoader(text, limits)  # checks the characters: may raise ReaderError
        node = loader.get_single_node()
        if node is not None:
            check_expansion(node, limits)
        data = loader.construct_document(node) if node is not None else None
    except YamlLimitError as exc:
        raise _limit_error(exc, name, path) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = ": ".join(part for part in (exc.context, exc.problem) if part)
        found = (problem(name, line, (), f"YAML syntax error: {detail}"),)
        raise ConfigError(summarise(found, name), path, found) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error: {exc}", path, (f"{name}: {exc}",)) from exc
    except (ArithmeticError, LookupError, ValueError, TypeError, AttributeError) as exc:
        # PyYAML builds some hostile values with a plain Python error (`!!int ""`: IndexError)
        message = f"a value cannot be read ({exc}); check the numbers and tags in the file"
        raise ConfigError(message, path, (f"{name}: {message}",)) from exc
    finally:
        if loader is not None:
            loader.dispose()
    lines: dict[Loc, int] = {}
    duplicates: list[str] = []
    if node is not None:
        _walk(node, (), lines, duplicates, name, set())
    return YamlDocument(name, data, lines, tuple(duplicates))


def _limit_error(exc: YamlLimitError, name: str, path: Path | None) -> ConfigError:
    found = (problem(name, exc.line, (), exc.message),)
    return ConfigError(summarise(found, name), path, found)


def validation_problems(
    exc: ValidationError, doc: YamlDocument, model: type[BaseModel] | None = None
) -> list[str]:
    """Every error of ``exc`` as a problem line, located in ``doc``; ``model`` names known keys."""
    grouped: dict[Loc, list[str]] = {}  # a union reports one error per member: join them
    for error in exc.errors():
        loc = _data_loc(doc.data, tuple(error["loc"]), error["type"] == "missing")
        messages = grouped.setdefault(loc, [])
        message = _message(error, loc, model)
        if message not in messages:
            messages.append(message)
    found = [(doc.line_of(loc) or 0, loc, _join(msgs)) for loc, msgs in grouped.items()]
    found.sort(key=lambda item: item[0])
    return [problem(doc.name, line or None, loc, message) for line, loc, message in found]


def ordered(problems: Sequence[str], name: str) -> tuple[str, ...]:
    """Problem lines of one file sorted by line number (those without a line first)."""
    return tuple(sorted(problems, key=lambda text: _line(text, name) or 0))


def summarise(problems: Sequence[str], name: str) -> str:
    """A one-line message for ConfigError: the first problem without the file name, and a count."""
    line = _line(problems[0], name)
    rest = problems[0].removeprefix(name).lstrip(":0123456789").removeprefix(" ")
    first = f"line {line}: {rest}" if line is not None else rest
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return first + more


def _line(text: str, name: str) -> int | None:
    head = text.removeprefix(name).split(": ", 1)[0]
    return int(head[1:]) if head[:1] == ":" and head[1:].isdigit() else None


# --- helpers -----------------------------------------------------------------------------


def _normalise(loc: Loc) -> Loc:
    return tuple(part if isinstance(part, int) else str(part) for part in loc)


def _walk(
    node: yaml.Node,
    loc: Loc,
    lines: dict[Loc, int],
    duplicates: list[str],
    name: str,
    visited: set[int],
) -> None:
    """Lines of every key and item, each node visited once: what an alias repeats is
    located at the alias (its key or item), not walked again."""
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if id(node) in visited:
            return
        visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: keys spelled out here win; merged ones keep no line
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                message = f"duplicate key (first on line {seen[key]}); remove one"
                duplicates.append(problem(name, line, (*loc, key), message))
            seen[key] = line
            lines[(*loc, key)] = line
            _walk(value_node, (*loc, key), lines, duplicates, name, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _walk(item, (*loc, index), lines, duplicates, name, visited)


def _data_loc(data: Any, loc: Loc, missing: bool) -> Loc:
    """The part of pydantic's ``loc`` that names places in the data (drops union tags)."""
    kept: list[str | int] = []
    for index, part in enumerate(loc):
        if isinstance(data, Mapping):
            key = next((k for k in data if str(k) == str(part)), None)
            if key is None:
                if missing and index == len(loc) - 1:
                    kept.append(str(part))
                break
            data = data[key]
            kept.append(str(part))
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
            kept.append(part)
        else:
            break
    return tuple(kept)


def _join(messages: list[str]) -> str:
    """``Input should be a valid string, or a valid number`` for a union's alternatives."""
    lead = "Input should be "
    rest = [m.removeprefix(lead) for m in messages[1:]]
    if messages[0].startswith(lead) and all(m.startswith(lead) for m in messages):
        return ", or ".join([messages[0], *rest])
    return "; or ".join(messages)


def _message(error: Any, loc: Loc, model: type[BaseModel] | None) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        hint = f"; known keys: {', '.join(known)}" if known else "; check the spelling"
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, (str, int, float, bool)) or value is None:
        message += f" (got {value!r})"
    return message


def _known_keys(model: type[BaseModel] | None, loc: Loc) -> list[str]:
    for part in loc:
        if model is None or isinstance(part, int):
            return []
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if is_model else None  # type: ignore[assignment]
    return sorted(model.model_fields) if model is not None else []
