"""CLIP zero-shot analysis.

- ``labels``: the label tables (seed 000's five built in, extended or replaced by config).
- ``cache``: label text embeddings on disk, keyed by model and labels.
- ``loading``: loading the model, tokenizer and image processor; ClipUnavailableError.
- ``clip``: ``ClipAnalyzer``, which scores images against the tables.

Nothing is imported here, so ``labels`` can be used without loading torch.

May import: ``daemon.config``, ``daemon.records``, ``daemon.errors``, ``daemon.fs`` (the cache's
atomic writes); nothing else of the pipeline.
"""
