"""Compose: turn an image's CLIP analysis and statistics (and, in `vision`, the image) into a prompt.

- `client`: the Ollama backend behind the small `LLM` protocol, with error mapping; answers
  streamed and capped; `bounded`: the byte and time limits on every response.
- `schemas`: the JSON answers each mode asks for (pydantic, and their `format` schemas).
- `prompts`: the chat messages per mode (pure).
- `text`: cleaning model output, fitting the .txt line, the no-LLM `clip` template (pure).
- `modes`: `Composer`, which picks the mode, retries, and falls back to the template.

May import: `daemon.config`, `daemon.records`, `daemon.errors`, `daemon.clean`, and
`daemon.pipeline.load` for the JPEG a vision model receives; never the other stages.
"""

from __future__ import annotations

from daemon.pipeline.compose.client import LLM, LLMReply, OllamaLLM
from daemon.pipeline.compose.modes import Composer

__all__ = ["LLM", "Composer", "LLMReply", "OllamaLLM"]
