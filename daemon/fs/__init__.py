"""Filesystem primitives every part of promptd shares: which names are never images
(``names``), a fast walk of an inbox tree that follows no symlinks (``treewalk``), and
crash-safe atomic writes (``atomic``).

May import: ``daemon.errors`` only; everything else may import this.
"""
