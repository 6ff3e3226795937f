"""Finding the images that need work: the start-up scan and the rescans of `promptd run`.

The filesystem is the truth: an image whose sidecars are missing or out of date is pending.
The walk and the freshness check are the pipeline's own (`discover`, `admit`), so the scan
and the worker always agree on what is up to date; only stat and the small `.json` are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .pipeline import Admitted, Context, admit, discover


def pending_images(root: Path, ctx: Context, *, redo_degraded: bool) -> Iterator[Path]:
    """Every image under `root` (a file or folder) that needs work, lazily.

    Images held by an invalid rule file are yielded too, so the worker records them as held
    and `promptd status` shows the folder.
    """
    for path in discover([root], ctx.config):
        verdict = admit(path, ctx, redo_degraded=redo_degraded)
        if isinstance(verdict, Admitted) or verdict.outcome == "held":
            yield path
