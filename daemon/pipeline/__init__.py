"""The pipeline: named stage functions that turn image paths into sidecars.

admit -> load -> analyze -> compose -> write, over the small frozen records in
``daemon.records``. Nothing here starts a thread: the CLI runs the stages synchronously and
the service only wraps them in its worker.

- ``admit``: eligible, governed by a valid rule, not up to date? (``discover`` for `process`)
- ``load`` and ``stats``: read once, hash, decode under limits; model-free pixel statistics.
- ``analyze/``: CLIP zero-shot against cached label embeddings, batched.
- ``compose/``: the Ollama client, messages, answer schemas, text cleaning, modes, fallback.
- ``write``: the .txt line fitted to the token budget, and the record, through ``daemon.sidecar``
  (``write_quarantined``: the record of an image promptd crashed on twice).
- ``batch``: the drivers (``prepare_batch``, ``analyze_prepared``, ``finish_batch``,
  ``process_batch``); ``order``: which model an image uses, and orders that spare reloads.
- ``upload``: the same stages for an image that arrives as bytes (the HTTP API), in memory;
  ``keep``: saving an upload and its sidecars into ``api.save_to``.
- ``context``: what the stages are handed; ``backends``: builds it with real CLIP and Ollama.

May import: ``daemon.config``, ``daemon.records``, ``daemon.errors``, ``daemon.clean``,
``daemon.fs``, ``daemon.sidecar``; never ``daemon.watch`` or ``daemon.service``.
"""

from daemon.pipeline.admit import Admitted, admit, discover, freshness_of, is_candidate
from daemon.pipeline.batch import (
    ComposeAll,
    ComposeStep,
    Prepared,
    analyze_prepared,
    finish_batch,
    log_result,
    prepare_batch,
    process_batch,
)
from daemon.pipeline.context import Analyzer, Context
from daemon.pipeline.write import write_quarantined

__all__ = [
    "Admitted",
    "Analyzer",
    "ComposeAll",
    "ComposeStep",
    "Context",
    "Prepared",
    "admit",
    "analyze_prepared",
    "discover",
    "finish_batch",
    "freshness_of",
    "is_candidate",
    "log_result",
    "prepare_batch",
    "process_batch",
    "write_quarantined",
]
