"""CLIP zero-shot analysis: label tables (labels), their text-embedding cache (cache), the model (clip)."""

from __future__ import annotations

from .clip import ClipAnalyzer, ClipUnavailableError
from .labels import DEFAULT_TABLES, label_tables

__all__ = ["DEFAULT_TABLES", "ClipAnalyzer", "ClipUnavailableError", "label_tables"]
