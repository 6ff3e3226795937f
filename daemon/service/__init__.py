"""`promptd run`: the running daemon. Owns every thread, the signals and systemd.

- ``daemon``: ``Service``: start-up, reload, the main loop (signals, sd_notify, status), stop.
- ``live``: what the threads share and a reload replaces (the config and the pipeline context).
- ``worker``: the worker thread: batches from the queue through the pipeline, decoded ahead.
- ``intake``: the scanner thread and the watcher's callbacks: paths into the queue.
- ``health``: brings degraded results back once Ollama answers again.
- ``progress``: what the worker has in hand and since when (gates the watchdog ping);
  ``quarantine``: images in hand during a crash, quarantined after two.
- ``queue``: the bounded, de-duplicated job queue with retries; ``gpulock``: CLIP and Ollama
  take turns; ``tally``: counts; ``llmtime``: model loads and tokens/s; ``state``: the status
  file; ``sdnotify``: systemd's protocol.

May import anything below it; only ``daemon.cli`` imports it.
"""
