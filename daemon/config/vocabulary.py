"""The ``clip.vocabularies`` setting: which phrase tables clip_prompt draws from, and where.

promptd's own lists are ``builtin``; a table can be turned ``off`` or pointed at a file of the
user's (one phrase per line, e.g. CLIP Interrogator's ``data/*.txt``). The files themselves
are read, under limits, by ``daemon.pipeline.analyze.vocab``.
"""

from __future__ import annotations

import re
from typing import Any

VOCABULARY_DEFAULTS: dict[str, str] = {
    "mediums": "builtin",
    "movements": "builtin",
    "lighting": "builtin",
    "camera": "builtin",
    "flavors": "builtin",
    "artists": "off",  # names, used as "by NAME"
}
MAX_TABLES = 16
_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def vocabulary_sources(value: Any) -> Any:
    """``clip.vocabularies`` checked: table names are lowercase identifiers, values builtin
    (for promptd's own tables only), off or a file. YAML reads a bare ``off`` as false and
    ``on`` as true; they are taken as meant. Raises ValueError (reported by pydantic)."""
    if not isinstance(value, dict):
        return value  # pydantic says what is wrong with it
    if len(value) > MAX_TABLES:
        raise ValueError(f"at most {MAX_TABLES} vocabulary tables")
    checked = {}
    for name, source in value.items():
        if isinstance(source, bool):
            source = "builtin" if source else "off"
        if not isinstance(name, str) or not _TABLE_NAME.match(name):
            raise ValueError(f"table name {name!r}: use lowercase letters, digits and _")
        if isinstance(source, str) and not source.strip():
            raise ValueError(f"{name}: give builtin, off or a file")
        if source == "builtin" and name not in VOCABULARY_DEFAULTS:
            raise ValueError(f"{name}: promptd has no built-in table of that name; give a file")
        checked[name] = source
    return checked
