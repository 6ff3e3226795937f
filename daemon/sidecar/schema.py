"""The sidecar's JSON Schema (``sidecar.schema.json``, shipped beside this module) and a
validator for documents, so consumers and the drift tests check records against one file."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_RESOURCE = "sidecar.schema.json"


@lru_cache(maxsize=1)
def sidecar_schema() -> dict[str, Any]:
    """The JSON Schema shipped with the package (``daemon/sidecar/sidecar.schema.json``)."""
    text = resources.files("daemon.sidecar").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    """A validator for the shipped schema, built once."""
    return Draft202012Validator(sidecar_schema())


def validate_sidecar(doc: Any) -> list[str]:
    """Every way ``doc`` breaks the sidecar schema, as ``path: problem`` lines; empty when valid."""
    problems = []
    for err in sorted(_validator().iter_errors(doc), key=lambda e: list(map(str, e.path))):
        where = ".".join(str(part) for part in err.absolute_path) or "(document)"
        message = err.message
        if err.validator in ("pattern", "not") and "description" in err.schema:
            message = f"{err.instance!r} is invalid: {err.schema['description']}"
        problems.append(f"{where}: {message}")
    return problems
