"""Sidecars follow their image: moved with it inside the inbox, removed when it is deleted.

Only files promptd wrote are touched: a .json of our schema that names the image, and a .txt
whose content still matches the digest that .json recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from daemon import sidecar
from daemon.fs.rawname import display_name, record_names, same_name

log = structlog.get_logger("promptd.follow")


def find_own_sidecar(image: Path) -> tuple[Path, dict[str, Any]] | None:
    """The .json promptd wrote for ``image`` (either naming form), with its content."""
    for candidate in sidecar.sidecar_candidates(image):
        if candidate.suffix != ".json":
            continue
        doc = sidecar.read_sidecar(candidate)
        if doc is not None and same_name(doc.get("image"), image.name):
            return candidate, doc
    return None


def remove_for(image: Path) -> list[Path]:
    """The image is gone: remove its .json, and its .txt if the user has not edited it."""
    removed = sidecar.remove_sidecars(image)
    if removed:
        log.info("sidecars_removed", image=str(image), files=[str(p) for p in removed])
    return removed


def move_for(src: Path, dest: Path, naming: str, extensions: tuple[str, ...]) -> list[Path]:
    """The image moved from ``src`` to ``dest``: carry its sidecars along, renamed to match."""
    found = find_own_sidecar(src)
    if found is None:
        return []
    json_path, doc = found
    target = sidecar.sidecar_paths(dest, naming, extensions)  # type: ignore[arg-type]
    if target.json.exists() and target.json != json_path:
        log.warning("sidecar_move_skipped", image=str(dest), reason=f"{target.json} exists")
        return []
    moved = []
    outputs = dict(doc.get("outputs") or {})
    if outputs.get("txt"):
        txt = sidecar.own_txt(src, doc)
        if txt is not None and sidecar.txt_is_ours(txt, doc) and not target.txt.exists():
            txt.replace(target.txt)
            moved.append(target.txt)
            outputs["txt"] = display_name(target.txt.name)
        else:
            outputs["txt"] = None
            outputs["txt_sha256"] = None
    image = {**doc["image"], **record_names(dest.name)}
    updated = {**doc, "image": image, "outputs": outputs}
    sidecar.write_atomic(target.json, sidecar.dump_sidecar(updated))
    if json_path != target.json:
        json_path.unlink(missing_ok=True)
    moved.append(target.json)
    log.info("sidecars_moved", src=str(src), dest=str(dest), files=[str(p) for p in moved])
    return moved
