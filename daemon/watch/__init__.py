"""Noticing work: which images in the inboxes are new, changed or gone.

- ``watcher``: supervised watchdog observers feeding the settler; callbacks on its own thread.
- ``observers``: inotify or polling per folder, restartable; ``fsinfo``: mount types, inotify limits.
- ``eventmap``: what a watchdog event means (pure); ``settle``: when a written file is complete.
- ``scan``: the stat-only scan for pending images (start-up and periodic rescans).
- ``follow``: sidecars follow moved images and go with deleted ones.

May import: ``daemon.config``, ``daemon.fs``, ``daemon.sidecar``, ``daemon.errors`` and, for the
freshness test the worker uses too, ``daemon.pipeline``; never ``daemon.service``.
"""
