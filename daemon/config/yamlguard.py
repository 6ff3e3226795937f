"""Limits on what a YAML file may be before promptd builds anything from it.

A shared inbox lets anyone write a ``.promptd.yaml``, so rule files (and config.yaml, read by
the same loader) are untrusted input. A few hundred bytes of anchors and aliases can describe
a structure of billions of values ("billion laughs"): PyYAML shares aliased objects, so the
cost lands on whatever walks the result. Everything here is checked before construction:

- ``read_capped``: a regular file (a FIFO or a device would block or never end), at most
  ``max_bytes``, read with one bounded read;
- ``BoundedLoader``: while composing, at most ``max_nodes`` values as written, ``max_depth``
  levels of nesting and ``max_aliases`` aliases;
- ``check_expansion``: the size of the structure with every alias expanded, computed from the
  node graph without expanding it (once per node), at most ``max_expanded``; an alias inside
  the structure it names (a cycle) is refused too.

A limit that trips raises ``YamlLimitError`` with the line where it tripped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class YamlLimits:
    """How large a YAML file may be, as written and once its aliases are expanded."""

    what: str  # how messages name the kind of file: "a rule file", "config.yaml"
    max_bytes: int
    max_depth: int
    max_nodes: int
    max_aliases: int
    max_expanded: int


# A rule file holds a dozen settings; config.yaml may carry long label tables.
RULE_FILE_LIMITS = YamlLimits("a rule file", 64 * 1024, 20, 5_000, 8, 5_000)
CONFIG_LIMITS = YamlLimits("config.yaml", 1024 * 1024, 20, 200_000, 64, 200_000)


class YamlLimitError(Exception):
    """A limit tripped; ``line`` is 1-based (None when unknown), ``message`` says what to do."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def _line(mark: yaml.Mark | None) -> int | None:
    return mark.line + 1 if mark is not None else None


def read_capped(path: Path, limits: YamlLimits) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file of at most ``max_bytes``.

    Raises ``YamlLimitError`` for a file too large or not regular, ``OSError`` when unreadable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise YamlLimitError("not a regular file; make it a plain text file", None)
        data = os.read(fd, limits.max_bytes + 1) if st.st_size <= limits.max_bytes else b""
    finally:
        os.close(fd)
    size = max(st.st_size, len(data))
    if size > limits.max_bytes:
        raise YamlLimitError(_too_large(size, limits), None)
    return data


def check_size(text: str, limits: YamlLimits) -> None:
    """Raise ``YamlLimitError`` when ``text`` is longer than ``max_bytes`` in UTF-8."""
    if len(text) > limits.max_bytes or len(text.encode("utf-8", "replace")) > limits.max_bytes:
        raise YamlLimitError(_too_large(len(text.encode("utf-8", "replace")), limits), None)


def _too_large(size: int, limits: YamlLimits) -> str:
    return (
        f"the file is {size:,} bytes, above the {limits.max_bytes:,}-byte limit for "
        f"{limits.what}; it should hold a few settings, not data"
    )


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts nodes, depth and aliases while it composes."""

    def __init__(self, text: str, limits: YamlLimits) -> None:
        super().__init__(text)
        self.limits = limits
        self._depth = 0
        self._nodes = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """One node, after checking that it keeps the document within the limits."""
        limits = self.limits
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > limits.max_aliases:
                raise YamlLimitError(
                    f"more than {limits.max_aliases} aliases (*name) in {limits.what}; "
                    "write the values out instead of referring to anchors",
                    _line(mark),
                )
            return super().compose_node(parent, index)
        self._nodes += 1
        if self._nodes > limits.max_nodes:
            raise YamlLimitError(
                f"more than {limits.max_nodes:,} values in {limits.what}; "
                "it should hold a few settings, not data",
                _line(mark),
            )
        if self._depth >= limits.max_depth:
            raise YamlLimitError(
                f"nested more than {limits.max_depth} levels deep; "
                f"{limits.what} needs only a few levels",
                _line(mark),
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def check_expansion(root: yaml.Node, limits: YamlLimits) -> int:
    """The number of values ``root`` stands for with every alias expanded; raises
    ``YamlLimitError`` above ``max_expanded`` values or ``max_depth`` levels once expanded
    (aliases nest what they name), or for an alias inside what it names.

    Each node is measured once (shared nodes are looked up), so the cost is that of the graph.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels) once expanded
    open_nodes: set[int] = set()

    def too_deep(node: yaml.Node) -> YamlLimitError:
        return YamlLimitError(
            f"with its aliases expanded it is nested more than {limits.max_depth} levels "
            "deep; write the values out or use fewer aliases",
            _line(node.start_mark),
        )

    def measure(node: yaml.Node, level: int) -> tuple[int, int]:
        key = id(node)
        if key in measured:
            if level + measured[key][1] - 1 > limits.max_depth:
                raise too_deep(node)
            return measured[key]
        if key in open_nodes:
            raise YamlLimitError(
                "an alias refers to the list or mapping it is part of (a recursive "
                "structure); remove it",
                _line(node.start_mark),
            )
        if level > limits.max_depth:
            raise too_deep(node)
        total, height = 1, 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            open_nodes.add(key)
            children = (
                node.value
                if isinstance(node, yaml.SequenceNode)
                else [part for pair in node.value for part in pair]
            )
            for child in children:
                values, levels = measure(child, level + 1)
                total += values
                height = max(height, levels + 1)
                if total > limits.max_expanded:
                    raise YamlLimitError(
                        f"its aliases expand to more than {limits.max_expanded:,} values "
                        '(a "billion laughs" pattern); write the values out or use fewer aliases',
                        _line(node.start_mark),
                    )
            open_nodes.discard(key)
        measured[key] = (total, height)
        return total, height

    return measure(root, 1)[0]
