"""Sidecar files: naming, atomic writes, the document and its schema, freshness and ownership."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from daemon import __version__
from daemon.config import RuleSettings
from daemon.errors import ImageError, TransientError
from daemon.fs.atomic import temp_name, write_error
from daemon.records import Composition, EffectiveRule, ImageStats, LoadedImage, PaletteColor, Scored
from daemon.sidecar import (
    SCHEMA_ID,
    SidecarPaths,
    build_error_sidecar,
    build_sidecar,
    dump_sidecar,
    freshness,
    is_temp_name,
    json_is_foreign,
    plan_txt,
    read_sidecar,
    remove_sidecars,
    sidecar_candidates,
    sidecar_names,
    sidecar_paths,
    sweep_temp_files,
    txt_is_ours,
    validate_sidecar,
    write_atomic,
    write_sidecars,
)
from daemon.sidecar.schema import sidecar_schema

EXTS = (".jpg", ".jpeg", ".png", ".webp")
LINE = "sks person, portrait of a woman, soft light, film grain"
WHEN = datetime(2025, 1, 31, 12, 0, 0, tzinfo=timezone.utc)


# --- helpers ---------------------------------------------------------------------------


def make_image(path: Path, size: tuple[int, int] = (6, 4)) -> LoadedImage:
    """A real tiny PNG on disk and the LoadedImage the load stage would make of it."""
    Image.new("RGB", size, (200, 40, 40)).save(path, format="PNG")
    data = path.read_bytes()
    st = path.stat()
    stats = ImageStats(
        width=size[0],
        height=size[1],
        orientation="landscape",
        aspect_ratio="3:2",
        brightness=0.35,
        contrast=0.0,
        saturation=0.8,
        palette=(PaletteColor(name="red", hex="#c82828", share=1.0),),
    )
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    return LoadedImage(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=st.st_size,
        mtime_ns=st.st_mtime_ns,
        format="PNG",
        width=size[0],
        height=size[1],
        image=rgb,
        stats=stats,
    )


RULE = EffectiveRule(
    settings=RuleSettings(trigger_words=("sks person",)),
    sources=(Path("/etc/promptd/config.yaml"), Path("/inbox/.promptd.yaml")),
    fingerprint="fp-1",
)
ANALYSIS = {
    "style": (Scored("photograph", 0.71234567), Scored("oil painting", 0.1)),
    "mood": (Scored("calm", 0.5),),
}


def composition(degraded_reason: str | None = None) -> Composition:
    """A composition as the compose stage returns it (a clip fallback when degraded)."""
    return Composition(
        requested_mode="quality",
        mode="clip" if degraded_reason else "quality",
        prompt="portrait of a woman, soft light, film grain",
        negative_prompt="blurry, lowres",
        context=None
        if degraded_reason
        else {"brief_caption": "Retrato de una mujer", "objects": ("silla", "lámpara")},
        models={} if degraded_reason else {"llm": "mistral:latest"},
        degraded_reason=degraded_reason,
    )


def ok_doc(loaded: LoadedImage, **overrides: Any) -> dict[str, Any]:
    """A built ok document for ``loaded`` with its .txt written under the stem name."""
    args: dict[str, Any] = {
        "image": loaded,
        "rule": RULE,
        "composition": composition(),
        "analysis": ANALYSIS,
        "prompt": LINE,
        "txt_name": loaded.path.stem + ".txt",
        "clip_model": "openai/clip-vit-base-patch32",
        "timings_ms": {"load": 3.21, "analyze": 40.0, "compose": 900.55},
        "created_at": WHEN,
    }
    args.update(overrides)
    return build_sidecar(**args)


def stem_paths(image: Path) -> SidecarPaths:
    """The stem-form sidecar paths of ``image``."""
    return SidecarPaths(image.with_suffix(".txt"), image.with_suffix(".json"))


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedImage:
    """A tiny real image in tmp_path."""
    return make_image(tmp_path / "photo.png")


def listing(folder: Path) -> list[str]:
    """Names in ``folder``, sorted."""
    return sorted(entry.name for entry in folder.iterdir())


# --- naming ----------------------------------------------------------------------------


def test_sidecar_names_stem_form_replaces_the_extension() -> None:
    """stem naming: photo.jpg -> photo.txt and photo.json."""
    assert sidecar_names("photo.jpg", "stem", ["photo.jpg"], EXTS) == ("photo.txt", "photo.json")


def test_sidecar_names_filename_form_keeps_the_extension() -> None:
    """filename naming: photo.jpg -> photo.jpg.txt and photo.jpg.json."""
    names = sidecar_names("photo.jpg", "filename", ["photo.jpg"], EXTS)
    assert names == ("photo.jpg.txt", "photo.jpg.json")


@pytest.mark.parametrize("folder", [["a.png", "a.jpg"], ["a.jpg", "a.png"]])
def test_sidecar_names_two_images_with_one_stem_both_use_the_filename_form(
    folder: list[str],
) -> None:
    """a.png and a.jpg never share a.txt: both use the filename form, whatever the order."""
    assert sidecar_names("a.png", "stem", folder, EXTS) == ("a.png.txt", "a.png.json")
    assert sidecar_names("a.jpg", "stem", folder, EXTS) == ("a.jpg.txt", "a.jpg.json")


def test_sidecar_names_extensions_and_stems_compare_case_insensitively() -> None:
    """A.PNG collides with a.jpg (safe on case-insensitive filesystems too)."""
    assert sidecar_names("a.jpg", "stem", ["A.PNG", "a.jpg"], EXTS)[0] == "a.jpg.txt"


def test_sidecar_names_a_caption_with_the_same_stem_is_not_a_collision() -> None:
    """a.png beside a.txt (not an image) keeps a.txt: that file is its caption."""
    names = sidecar_names("a.png", "stem", ["a.png", "a.txt", "a.json", "a.psd"], EXTS)
    assert names == ("a.txt", "a.json")


def test_sidecar_names_every_image_in_a_tricky_folder_gets_its_own_files() -> None:
    """No two images share a sidecar, even when one is named like another's stem."""
    folder = ["a.jpg", "a.png", "a.jpg.png", "b.jpg", "b.jpg.webp", "c.JPG", "notes.txt"]
    images = [name for name in folder if name.lower().endswith(EXTS)]
    taken = [sidecar_names(name, "stem", folder, EXTS) for name in images]
    txts = [txt.casefold() for txt, _json in taken]
    assert len(set(txts)) == len(images)
    assert sidecar_names("c.JPG", "stem", folder, EXTS) == ("c.txt", "c.json")


def test_sidecar_paths_looks_at_the_real_folder(tmp_path: Path) -> None:
    """sidecar_paths lists the folder: alone -> stem form; with a same-stem image -> filename."""
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    assert sidecar_paths(image, "stem", EXTS) == stem_paths(image)
    (tmp_path / "a.png").write_bytes(b"y")
    paths = sidecar_paths(image, "stem", EXTS)
    assert paths == SidecarPaths(tmp_path / "a.jpg.txt", tmp_path / "a.jpg.json")


def test_sidecar_candidates_lists_both_forms(tmp_path: Path) -> None:
    """Both forms, stem first, for cleanup code."""
    names = [path.name for path in sidecar_candidates(tmp_path / "a.jpg")]
    assert names == ["a.txt", "a.json", "a.jpg.txt", "a.jpg.json"]


# --- atomic writes ---------------------------------------------------------------------


def test_write_atomic_new_file_has_the_data_and_leaves_no_temp(tmp_path: Path) -> None:
    """The file holds exactly the data and nothing else is left in the folder."""
    target = tmp_path / "photo.txt"
    write_atomic(target, b"hello\n")
    assert target.read_bytes() == b"hello\n"
    assert listing(tmp_path) == ["photo.txt"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_write_atomic_file_mode_is_what_open_would_give(
    tmp_path: Path, umask: int, mode: int
) -> None:
    """The sidecar is readable like a normal file: 0o666 less the umask, not mkstemp's 0o600."""
    previous = os.umask(umask)
    try:
        write_atomic(tmp_path / "photo.txt", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "photo.txt").stat().st_mode & 0o777 == mode


def test_write_atomic_existing_file_is_replaced(tmp_path: Path) -> None:
    """An existing file is replaced whole by the new content."""
    target = tmp_path / "photo.json"
    target.write_bytes(b"old content that is longer than the new one")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert listing(tmp_path) == ["photo.json"]


def test_write_atomic_failure_halfway_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    """A write that fails halfway (file too large) leaves the old file and no temp behind."""
    target = tmp_path / "photo.json"
    target.write_bytes(b"old")
    # RLIMIT_FSIZE applies to the whole process (pytest's own output included), so the
    # failing write runs in a child process with the limit lowered to 1 KiB.
    child = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from daemon.fs.atomic import write_atomic
        from daemon.errors import TransientError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
        try:
            write_atomic(Path({str(target)!r}), b"x" * 4096)
        except TransientError as exc:
            ok = exc.path == Path({str(target)!r}) and isinstance(exc.__cause__, OSError)
            sys.exit(0 if ok else 3)
        sys.exit(4)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["photo.json"]


def test_write_atomic_non_os_failure_is_reraised_and_cleans_up(tmp_path: Path) -> None:
    """A programming error while writing is re-raised as is, and the temp file removed."""
    target = tmp_path / "photo.txt"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["photo.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_write_atomic_read_only_folder_raises_transient_and_keeps_old(tmp_path: Path) -> None:
    """A folder we may not write to gives a TransientError; the old file stays."""
    target = tmp_path / "photo.txt"
    target.write_bytes(b"old")
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(TransientError, match="writable"):
            write_atomic(target, b"new")
    finally:
        tmp_path.chmod(0o755)
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["photo.txt"]


def test_write_atomic_vanished_folder_raises_transient_naming_the_path(tmp_path: Path) -> None:
    """Writing into a folder that no longer exists is a TransientError that names the path."""
    target = tmp_path / "gone" / "photo.txt"
    with pytest.raises(TransientError) as caught:
        write_atomic(target, b"x")
    assert caught.value.path == target
    assert str(target) in str(caught.value)
    assert listing(tmp_path) == []


def test_write_error_disk_full_says_so(tmp_path: Path) -> None:
    """ENOSPC becomes a TransientError whose message starts with 'disk full'."""
    err = write_error(tmp_path / "a.txt", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(err, TransientError)
    assert err.message.startswith("disk full")
    assert err.path == tmp_path / "a.txt"


def test_is_temp_name_recognises_only_promptd_temp_files() -> None:
    """Our temp names are recognised; captions, user dotfiles and other tools' temps are not."""
    assert is_temp_name(temp_name("photo.txt", 123, "ab12cd34"))
    assert is_temp_name(".photo.jpg.json.promptd-tmp.9.00ff")
    for name in ["photo.txt", ".photo.txt", ".photo.txt.tmp-12", ".syncthing.a.txt.tmp", "a.tmp"]:
        assert not is_temp_name(name)


def test_temp_name_long_target_name_stays_within_name_max() -> None:
    """A 250-byte target name still gives a temp name a filesystem accepts."""
    name = temp_name("é" * 125 + ".txt", 4194304, "ffffffff")
    assert len(os.fsencode(name)) <= 255
    assert is_temp_name(name)


def test_sweep_temp_files_removes_only_stale_promptd_temps(tmp_path: Path) -> None:
    """Stale promptd temps anywhere under root go; user files and in-flight temps stay."""
    sub = tmp_path / "sub" / "deeper"
    sub.mkdir(parents=True)
    stale = [tmp_path / temp_name("a.txt", 1, "aa"), sub / temp_name("b.json", 2, "bb")]
    own = tmp_path / temp_name("c.txt", os.getpid(), "cc")
    keep = [tmp_path / "a.txt", tmp_path / ".hidden", sub / ".b.json.tmp-2", own]
    for path in stale + keep:
        path.write_bytes(b"x")
    assert sweep_temp_files(tmp_path) == sorted(stale)
    assert all(path.exists() for path in keep)
    assert not any(path.exists() for path in stale)


# --- the document and its schema ---------------------------------------------------------


def test_build_sidecar_ok_document_validates_and_holds_the_facts(loaded: LoadedImage) -> None:
    """An ok record validates and carries the prompt, image facts, rule and outputs."""
    doc = ok_doc(loaded)
    assert validate_sidecar(doc) == []
    assert doc["schema"] == SCHEMA_ID
    assert (doc["status"], doc["mode"], doc["requested_mode"]) == ("ok", "quality", "quality")
    assert doc["prompt"] == LINE
    assert doc["image"]["sha256"] == loaded.sha256
    assert (doc["image"]["width"], doc["image"]["format"]) == (6, "PNG")
    assert doc["analysis"]["style"][0] == {"label": "photograph", "score": 0.7123}
    assert doc["context"]["objects"] == ["silla", "lámpara"]
    assert doc["models"] == {"clip": "openai/clip-vit-base-patch32", "llm": "mistral:latest"}
    assert doc["rule"]["sources"] == ["/etc/promptd/config.yaml", "/inbox/.promptd.yaml"]
    assert doc["rule"]["settings"]["trigger_words"] == ["sks person"]
    assert doc["outputs"]["txt_sha256"] == hashlib.sha256((LINE + "\n").encode()).hexdigest()
    assert doc["created_at"] == "2025-01-31T12:00:00.000Z"
    assert doc["generator"] == {"name": "promptd", "version": __version__}


def test_build_sidecar_degraded_document_validates_and_says_why(loaded: LoadedImage) -> None:
    """A fallback's record is degraded, names its reason and the mode actually used."""
    doc = ok_doc(loaded, composition=composition("ollama unreachable"), analysis=None)
    assert validate_sidecar(doc) == []
    assert (doc["status"], doc["mode"], doc["degraded_reason"]) == (
        "degraded",
        "clip",
        "ollama unreachable",
    )
    assert doc["analysis"] == {}
    assert doc["models"]["llm"] is None


def test_build_error_sidecar_undecodable_file_validates(tmp_path: Path) -> None:
    """An undecodable file's record has its stat and hash, null size and format, and the error."""
    image = tmp_path / "broken.jpg"
    image.write_bytes(b"not a jpeg")
    doc = build_error_sidecar(
        image_path=image,
        stat=image.stat(),
        rule=RULE,
        error=ImageError("not an image Pillow can read", image),
        sha256=hashlib.sha256(b"not a jpeg").hexdigest(),
    )
    assert validate_sidecar(doc) == []
    assert doc["error"] == {"kind": "image", "message": "not an image Pillow can read"}
    assert (doc["prompt"], doc["mode"], doc["requested_mode"]) == ("", None, "speed")
    assert doc["image"]["bytes"] == 10
    assert (doc["image"]["width"], doc["image"]["format"], doc["stats"]) == (None, None, None)
    assert doc["outputs"] == {"txt": None, "txt_sha256": None, "txt_kept": False}


def test_build_error_sidecar_unexpected_exception_is_internal(loaded: LoadedImage) -> None:
    """A non-promptd exception is recorded as kind internal with its type; it still validates."""
    doc = build_error_sidecar(
        image_path=loaded.path, stat=loaded.path.stat(), rule=RULE, error=KeyError("boom")
    )
    assert validate_sidecar(doc) == []
    assert doc["image"]["sha256"] is None
    assert doc["error"] == {"kind": "internal", "message": "KeyError: 'boom'"}


def test_build_sidecar_multiline_caption_is_a_programming_error(loaded: LoadedImage) -> None:
    """A caption with a line break or nothing visible raises ValueError."""
    for bad in ["two\nlines", "trailing\n", "sep\u2028arated", "   ", ""]:
        with pytest.raises(ValueError):
            ok_doc(loaded, prompt=bad)


@pytest.mark.parametrize(
    "overrides",
    [
        {"txt_kept": True},
        {"txt_line": "another line"},
        {"status": "degraded"},
        {"status": "ok", "degraded_reason": "CLIP weights missing"},
    ],
)
def test_build_sidecar_inconsistent_arguments_are_refused(
    loaded: LoadedImage, overrides: dict[str, Any]
) -> None:
    """Written and kept at once, a .txt line unlike the prompt, or a status without cause."""
    with pytest.raises(ValueError):
        ok_doc(loaded, **overrides)


def test_build_sidecar_pipeline_reason_and_negative_prompt_are_recorded(
    loaded: LoadedImage,
) -> None:
    """A reason from outside the composition (CLIP missing) degrades it; the negative given wins."""
    doc = ok_doc(
        loaded,
        txt_line=LINE,
        status="degraded",
        degraded_reason="CLIP weights missing",
        negative_prompt="watermark, blurry, lowres",
        analysis={},
    )
    assert validate_sidecar(doc) == []
    assert (doc["status"], doc["mode"]) == ("degraded", "quality")
    assert doc["degraded_reason"] == "CLIP weights missing"
    assert doc["negative_prompt"] == "watermark, blurry, lowres"


def test_sidecar_schema_is_shipped_and_a_valid_2020_12_schema() -> None:
    """The schema is package data, loads with importlib.resources and is itself valid."""
    shipped = resources.files("daemon.sidecar").joinpath("sidecar.schema.json")
    assert shipped.is_file()
    Draft202012Validator.check_schema(sidecar_schema())


def test_sidecar_schema_sections_match_what_build_sidecar_writes(loaded: LoadedImage) -> None:
    """Drift: the schema names exactly the fields the builder writes, section by section."""
    schema = sidecar_schema()
    doc = ok_doc(loaded)
    assert list(doc) == schema["required"] == list(schema["properties"])
    for section in ["image", "outputs", "stats"]:
        part = schema["$defs"][section]
        assert set(doc[section]) == set(part["required"]) == set(part["properties"])
    assert set(doc["rule"]) == set(schema["properties"]["rule"]["required"])


def broken(doc: dict[str, Any], change: str) -> dict[str, Any]:
    """A deep copy of ``doc`` with one named defect."""
    bad: dict[str, Any] = json.loads(json.dumps(doc))
    if change == "missing field":
        del bad["image"]
    elif change == "newline in prompt":
        bad["prompt"] = "a cat\nand a dog"
    elif change == "trailing newline in prompt":
        bad["prompt"] = "a cat\n"
    elif change == "blank prompt":
        bad["prompt"] = " "
    elif change == "error without error":
        bad["status"] = "error"
        bad["prompt"] = ""
        bad["mode"] = None
        bad["outputs"] = {"txt": None, "txt_sha256": None, "txt_kept": False}
    elif change == "error with prompt":
        bad["status"] = "error"
        bad["mode"] = None
        bad["outputs"] = {"txt": None, "txt_sha256": None, "txt_kept": False}
        bad["error"] = {"kind": "image", "message": "x"}
    elif change == "degraded without reason":
        bad["status"] = "degraded"
    elif change == "txt without hash":
        bad["outputs"]["txt_sha256"] = None
    elif change == "hash without txt":
        bad["outputs"]["txt"] = None
    elif change == "unknown field":
        bad["extra"] = 1
    elif change == "score above one":
        bad["analysis"]["style"][0]["score"] = 1.5
    elif change == "local time":
        bad["created_at"] = "2025-01-31T12:00:00+01:00"
    return bad


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ("missing field", "(document)"),
        ("newline in prompt", "prompt"),
        ("trailing newline in prompt", "prompt"),
        ("blank prompt", "prompt"),
        ("error without error", "error"),
        ("error with prompt", "prompt"),
        ("degraded without reason", "degraded_reason"),
        ("txt without hash", "outputs.txt_sha256"),
        ("hash without txt", "outputs.txt_sha256"),
        ("unknown field", "(document)"),
        ("score above one", "analysis.style.0.score"),
        ("local time", "created_at"),
    ],
)
def test_validate_sidecar_document_with_a_defect_fails_at_its_path(
    loaded: LoadedImage, change: str, where: str
) -> None:
    """Each defect is reported as a problem at the dotted path of the field at fault."""
    assert validate_sidecar(ok_doc(loaded)) == []
    problems = validate_sidecar(broken(ok_doc(loaded), change))
    assert [p.split(": ", 1)[0] for p in problems] == [where], problems


def test_dump_sidecar_is_utf8_indented_with_a_final_newline(loaded: LoadedImage) -> None:
    """Non-ASCII text stays readable, keys keep build order, the file ends with a newline."""
    doc = ok_doc(loaded)
    data = dump_sidecar(doc)
    assert data.endswith(b"}\n")
    assert "lámpara".encode() in data
    assert data.startswith(b'{\n  "schema": "promptd.sidecar/1",\n  "status": "ok"')
    assert json.loads(data) == doc


# --- reading and freshness ---------------------------------------------------------------


def test_read_sidecar_returns_the_written_document(loaded: LoadedImage) -> None:
    """A sidecar written by write_sidecars reads back equal."""
    paths = stem_paths(loaded.path)
    doc = ok_doc(loaded)
    write_sidecars(paths, txt_line=LINE, doc=doc, outputs=("txt", "json"))
    assert read_sidecar(paths.json) == doc


@pytest.mark.parametrize(
    "content",
    [None, b"{not json", b"\xff\xfe", b"[1, 2]", b'{"schema": "other/1"}', "dir"],
)
def test_read_sidecar_missing_or_foreign_returns_none(tmp_path: Path, content: Any) -> None:
    """Missing, unreadable, non-JSON, non-UTF-8 or foreign files read as None, never raise."""
    path = tmp_path / "photo.json"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert read_sidecar(path) is None


def test_json_is_foreign_only_for_files_promptd_did_not_write(loaded: LoadedImage) -> None:
    """Another tool's photo.json is foreign; ours and a missing one are not."""
    paths = stem_paths(loaded.path)
    assert not json_is_foreign(paths.json)
    paths.json.write_text('{"title": "from google takeout"}')
    assert json_is_foreign(paths.json)
    write_sidecars(paths, txt_line=LINE, doc=ok_doc(loaded), outputs=("txt", "json"))
    assert not json_is_foreign(paths.json)


def test_freshness_unchanged_image_and_rule_is_fresh(loaded: LoadedImage) -> None:
    """Same size, mtime and fingerprint: fresh."""
    assert freshness(ok_doc(loaded), loaded.path.stat(), "fp-1") == "fresh"


def test_freshness_touched_image_is_stale(loaded: LoadedImage) -> None:
    """A new mtime (same bytes) makes the record stale."""
    st = loaded.path.stat()
    os.utime(loaded.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert freshness(ok_doc(loaded), loaded.path.stat(), "fp-1") == "stale"


def test_freshness_resized_file_is_stale(loaded: LoadedImage) -> None:
    """A different size makes the record stale even with the mtime put back."""
    st = loaded.path.stat()
    with loaded.path.open("ab") as handle:
        handle.write(b"more")
    os.utime(loaded.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert freshness(ok_doc(loaded), loaded.path.stat(), "fp-1") == "stale"


def test_freshness_changed_rule_fingerprint_is_stale(loaded: LoadedImage) -> None:
    """A different rule fingerprint makes the record stale."""
    assert freshness(ok_doc(loaded), loaded.path.stat(), "fp-2") == "stale"


def test_freshness_degraded_record_is_degraded(loaded: LoadedImage) -> None:
    """An unchanged image with a fallback record is degraded (to be redone later)."""
    doc = ok_doc(loaded, composition=composition("ollama unreachable"))
    assert freshness(doc, loaded.path.stat(), "fp-1") == "degraded"


def test_freshness_error_record_for_unchanged_file_is_fresh(loaded: LoadedImage) -> None:
    """An error record is not retried forever: fresh while the file is unchanged."""
    doc = build_error_sidecar(
        image_path=loaded.path, stat=loaded.path.stat(), rule=RULE, error=ImageError("bad")
    )
    assert freshness(doc, loaded.path.stat(), "fp-1") == "fresh"


def test_freshness_malformed_record_is_stale(loaded: LoadedImage) -> None:
    """A record without the image section (or an unknown status) is stale, not an exception."""
    st = loaded.path.stat()
    assert freshness({"schema": SCHEMA_ID}, st, "fp-1") == "stale"
    assert freshness({**ok_doc(loaded), "status": "weird"}, st, "fp-1") == "stale"


# --- ownership, policy, writing and removal ----------------------------------------------


def test_txt_is_ours_until_the_user_edits_it(loaded: LoadedImage) -> None:
    """Our unchanged .txt is ours; after the user edits it, it is theirs."""
    paths = stem_paths(loaded.path)
    doc = ok_doc(loaded)
    write_sidecars(paths, txt_line=LINE, doc=doc, outputs=("txt", "json"))
    assert txt_is_ours(paths.txt, doc)
    paths.txt.write_text(LINE + ", my own words\n", encoding="utf-8")
    assert not txt_is_ours(paths.txt, doc)
    assert not txt_is_ours(paths.txt, None)


def test_txt_is_ours_record_naming_another_file_is_not_ours(loaded: LoadedImage) -> None:
    """Same bytes under another name (another image's caption) are not ours."""
    paths = stem_paths(loaded.path)
    doc = ok_doc(loaded, txt_name="photo.png.txt")
    paths.txt.write_bytes((LINE + "\n").encode())
    assert not txt_is_ours(paths.txt, doc)


def test_plan_txt_no_caption_yet_writes(loaded: LoadedImage) -> None:
    """No .txt: write it."""
    assert plan_txt(stem_paths(loaded.path), "keep", None) == "write"


def test_plan_txt_foreign_caption_is_kept_by_default(loaded: LoadedImage) -> None:
    """A .txt promptd did not write (kohya, A1111) is kept unless the rule says overwrite."""
    paths = stem_paths(loaded.path)
    paths.txt.write_text("my hand-written caption\n", encoding="utf-8")
    assert plan_txt(paths, "keep", None) == "keep"
    assert plan_txt(paths, "overwrite", None) == "write"


def test_plan_txt_folder_named_like_the_caption_is_never_overwritten(loaded: LoadedImage) -> None:
    """A directory at photo.txt is kept even under overwrite (replacing it would fail forever)."""
    paths = stem_paths(loaded.path)
    paths.txt.mkdir()
    assert plan_txt(paths, "overwrite", None) == "keep"


def test_plan_txt_our_caption_is_rewritten_but_an_edited_one_kept(loaded: LoadedImage) -> None:
    """Our own unchanged .txt may be rewritten; once edited by the user it is kept."""
    paths = stem_paths(loaded.path)
    doc = ok_doc(loaded)
    write_sidecars(paths, txt_line=LINE, doc=doc, outputs=("txt", "json"))
    assert plan_txt(paths, "keep", read_sidecar(paths.json)) == "write"
    paths.txt.write_text("edited\n", encoding="utf-8")
    assert plan_txt(paths, "keep", read_sidecar(paths.json)) == "keep"


def test_write_sidecars_writes_txt_then_json_and_returns_them_in_order(
    loaded: LoadedImage,
) -> None:
    """The .txt (one line plus newline) comes first, the .json done marker last."""
    paths = stem_paths(loaded.path)
    written = write_sidecars(paths, txt_line=LINE, doc=ok_doc(loaded), outputs=("json", "txt"))
    assert written == (paths.txt, paths.json)
    assert paths.txt.read_bytes() == (LINE + "\n").encode("utf-8")
    assert paths.txt.stat().st_mtime_ns <= paths.json.stat().st_mtime_ns
    assert listing(loaded.path.parent) == ["photo.json", "photo.png", "photo.txt"]


def test_write_sidecars_kept_caption_writes_only_the_json(loaded: LoadedImage) -> None:
    """With a foreign caption kept, only the .json is written and it says so."""
    paths = stem_paths(loaded.path)
    paths.txt.write_text("theirs\n", encoding="utf-8")
    plan = plan_txt(paths, "keep", read_sidecar(paths.json))
    doc = ok_doc(loaded, txt_name=None, txt_kept=plan == "keep")
    assert write_sidecars(paths, txt_line=None, doc=doc, outputs=("txt", "json")) == (paths.json,)
    assert paths.txt.read_text(encoding="utf-8") == "theirs\n"
    assert validate_sidecar(read_sidecar(paths.json)) == []


def test_write_sidecars_outputs_select_the_files(loaded: LoadedImage) -> None:
    """outputs: [json] writes only the .json; [txt] only the .txt."""
    paths = stem_paths(loaded.path)
    doc = ok_doc(loaded, txt_name=None)
    assert write_sidecars(paths, txt_line=LINE, doc=doc, outputs=("json",)) == (paths.json,)
    assert not paths.txt.exists()
    assert write_sidecars(paths, txt_line=LINE, doc=doc, outputs=("txt",)) == (paths.txt,)


def test_write_sidecars_record_disagreeing_with_the_txt_writes_nothing(
    loaded: LoadedImage,
) -> None:
    """A record whose outputs do not describe the .txt being written is refused up front."""
    paths = stem_paths(loaded.path)
    with pytest.raises(ValueError):
        write_sidecars(
            paths, txt_line=LINE, doc=ok_doc(loaded, txt_name=None), outputs=("txt", "json")
        )
    with pytest.raises(ValueError):
        write_sidecars(paths, txt_line="a line", doc=ok_doc(loaded), outputs=("txt", "json"))
    with pytest.raises(ValueError):
        write_sidecars(paths, txt_line="two\nlines", doc=ok_doc(loaded), outputs=("txt",))
    assert listing(loaded.path.parent) == ["photo.png"]


def test_remove_sidecars_removes_ours_and_keeps_edited_captions(loaded: LoadedImage) -> None:
    """The record goes with an unchanged caption; an edited caption stays."""
    paths = stem_paths(loaded.path)
    write_sidecars(paths, txt_line=LINE, doc=ok_doc(loaded), outputs=("txt", "json"))
    assert sorted(remove_sidecars(loaded.path)) == sorted([paths.txt, paths.json])
    write_sidecars(paths, txt_line=LINE, doc=ok_doc(loaded), outputs=("txt", "json"))
    paths.txt.write_text("edited\n", encoding="utf-8")
    assert remove_sidecars(loaded.path) == [paths.json]
    assert paths.txt.exists()


def test_remove_sidecars_never_takes_another_images_stem_sidecars(tmp_path: Path) -> None:
    """a.jpg deleted before it was processed: a.png's a.txt and a.json stay."""
    png = make_image(tmp_path / "a.png")
    paths = sidecar_paths(png.path, "stem", EXTS)
    write_sidecars(paths, txt_line=LINE, doc=ok_doc(png), outputs=("txt", "json"))
    assert remove_sidecars(tmp_path / "a.jpg", read_sidecar(paths.json)) == []
    assert listing(tmp_path) == ["a.json", "a.png", "a.txt"]


def test_remove_sidecars_leaves_other_images_and_foreign_files(tmp_path: Path) -> None:
    """Removing a.jpg's sidecars never touches a.png's or a foreign a.json."""
    png, jpg = make_image(tmp_path / "a.png"), make_image(tmp_path / "a.jpg")
    for image in (png, jpg):
        paths = sidecar_paths(image.path, "stem", EXTS)
        doc = ok_doc(image, txt_name=paths.txt.name)
        write_sidecars(paths, txt_line=LINE, doc=doc, outputs=("txt", "json"))
    (tmp_path / "a.json").write_text('{"foreign": true}')
    jpg.path.unlink()
    removed = remove_sidecars(jpg.path)
    assert sorted(removed) == [tmp_path / "a.jpg.json", tmp_path / "a.jpg.txt"]
    assert listing(tmp_path) == ["a.json", "a.png", "a.png.json", "a.png.txt"]
