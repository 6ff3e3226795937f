"""Training-set manifests built from the sidecar records: ``metadata.jsonl`` (Hugging Face
imagefolder, diffusers), ``metadata_kohya.json`` (kohya's ``--in_json``) and CSV.

- ``rows``: a folder's images as rows, read from their records and captions (linear, cached).
- ``formats``: the manifests as bytes (pure).
- ``keeper``: ``ManifestKeeper``, the daemon's debounced, per-folder rewrites.
- ``export``: ``promptd export``.

Sits above ``daemon.sidecar`` and below ``daemon.service``. May import: ``daemon.config``,
``daemon.records``, ``daemon.errors``, ``daemon.fs``, ``daemon.sidecar``; never the pipeline,
the watcher, the service or the CLI.
"""
