"""CLIP zero-shot analysis, and the CLIP-Interrogator-style prompt built from the same model.

- ``labels``: the label tables (seed 000's five built in, extended or replaced by config).
- ``cache``: text embeddings on disk, keyed by model and texts; ``textenc`` encodes texts in
  chunks and goes through that cache.
- ``loading``: loading the model, tokenizer and image processor; ClipUnavailableError.
- ``edges``: the image trimmed for preprocessing, the top labels of a table.
- ``clip``: ``ClipAnalyzer``, which scores images against the tables (and keeps their embeddings).
- ``vocab``: clip_prompt's phrase tables (promptd's own lists in ``vocab/*.txt``, the user's files).
- ``prefix``: CLIP's causal text encoder run incrementally (a prompt's states kept).
- ``interrogate``: ``Interrogator``, the classic picks and the greedy chain of clip_prompt.

Nothing is imported here, so ``labels`` and ``vocab`` can be used without loading torch.

May import: ``daemon.config``, ``daemon.records``, ``daemon.errors``, ``daemon.fs`` (the cache's
atomic writes); nothing else of the pipeline.
"""
