"""Filesystem primitives every part of promptd shares: which names are never images
(``names``), a fast walk of an inbox tree that follows no symlinks (``treewalk``),
crash-safe atomic writes (``atomic``), and names that are not valid UTF-8 or too long
(``rawname``).

May import: ``daemon.errors`` only; everything else may import this.
"""
