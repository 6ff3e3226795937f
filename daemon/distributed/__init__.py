"""Several machines, one inbox: Celery on Redis carries image keys from a producer to workers.

- ``keys``: an image's key on the wire (inbox name, relative path, size, mtime), validated as
  untrusted input; ``inboxes``: inbox names to this machine's folders, and back.
- ``app``: the Celery app and every delivery setting (late ack, prefetch 1, visibility timeout).
- ``coord``: promptd's own Redis keys: the per-image lock and its heartbeat, the queued marks,
  the crash counts, the workers' heartbeats.
- ``sink``: the producer's side of `promptd run`: pending images to the broker, reconnecting.
- ``producer``: what `promptd run` adds with a broker: the sink, the status poller, a local worker.
- ``runner``: one image on a worker: lock, wait until visible, crash count, the pipeline.
- ``tasks`` and ``worker``: the Celery task and `promptd worker`; ``status``: what
  `promptd status` shows about the broker and the workers.

Nothing outside this package imports Celery, kombu or redis, and nothing imports this
package unless ``distributed.broker`` is set. May import anything below it (service,
pipeline, watch, sidecar, config, fs, records, errors); only ``daemon.cli`` and the Service's
producer hook import it.
"""
