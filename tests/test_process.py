"""End to end: `promptd process` over real images, the tiny CLIP and the fake Ollama server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.cli import main
from daemon.config import ImageLimits
from daemon.sidecar import sidecar_names, validate_sidecar
from tests.fake_ollama import FakeOllama
from tests.images import SMALL_MAX_PIXELS, make_bad_images, make_good_images

SIDECAR_SUFFIXES = (".txt", ".json")
LLM_TIMINGS = (
    "llm_load_ms",
    "llm_prompt_tokens",
    "llm_prompt_ms",
    "llm_output_tokens",
    "llm_output_ms",
)


def write_config(
    tmp_path: Path,
    clip_dir: Path,
    ollama_url: str,
    *,
    defaults: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """A config.yaml for a test inbox under tmp_path; fast retries so fault tests stay quick."""
    config: dict[str, Any] = {
        "inbox": str(tmp_path / "inbox"),
        "cache_dir": str(tmp_path / "cache"),
        "clip": {"model": str(clip_dir), "device": "cpu", "offline": True, "batch_size": 4},
        "ollama": {
            "host": ollama_url,
            "retries": 1,
            "backoff_s": 0.01,
            "timeout": {"connect_s": 2, "read_s": 10},
        },
        "images": {"max_pixels": SMALL_MAX_PIXELS},
        "log": {"format": "json", "level": "warning"},
        "defaults": defaults or {},
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp_path / "inbox").mkdir(exist_ok=True)
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file that is not a sidecar."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix not in SIDECAR_SUFFIXES
    }


def names(folder: Path, name: str) -> tuple[Path, Path]:
    """The .txt and .json paths of an image under stem naming (filename form on a stem clash)."""
    listing = [p.name for p in folder.iterdir()]
    txt, js = sidecar_names(name, "stem", listing, ImageLimits().extensions)
    return folder / txt, folder / js


def sidecar(folder: Path, name: str) -> dict[str, Any]:
    """The .json next to the image ``name``, validated against the shipped schema."""
    doc: dict[str, Any] = json.loads(names(folder, name)[1].read_text("utf-8"))
    assert validate_sidecar(doc) == [], name
    return doc


@pytest.fixture
def inbox_world(tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama) -> Path:
    """An inbox with every good and bad test image; returns the config path."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    make_good_images(tmp_path / "inbox")
    make_bad_images(tmp_path / "inbox")
    return config


@pytest.mark.parametrize("mode", ["speed", "quality", "vision", "clip"])
def test_process_every_mode_writes_valid_sidecars_and_error_records(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama, mode: str
) -> None:
    """Each good image gets a .txt and a valid .json; each bad one an error .json; nothing else changes."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url, defaults={"mode": mode})
    inbox = tmp_path / "inbox"
    good = make_good_images(inbox)
    bad = make_bad_images(inbox)
    before = snapshot(inbox)

    code = main(["process", str(inbox), "--config", str(config), "--no-progress"])

    assert code == 1  # the bad images failed
    assert snapshot(inbox) == before
    for name, (width, height) in good.items():
        doc = sidecar(inbox, name)
        assert doc["status"] == "ok", (name, doc.get("degraded_reason"))
        assert doc["mode"] == mode
        assert (doc["image"]["width"], doc["image"]["height"]) == (width, height)
        line = names(inbox, name)[0].read_text("utf-8")
        assert line.strip() and "\n" not in line.rstrip("\n")
        assert doc["prompt"] == line.rstrip("\n")
        assert set(doc["analysis"]) >= {"style", "mood", "composition", "color_palette", "subjects"}
        if mode in ("quality", "vision"):
            assert {"brief_caption", "generative_prompt", "objects"} <= set(doc["context"])
        llm_keys = {k for k in doc["timings_ms"] if k.startswith("llm_")}
        assert llm_keys == (set() if mode == "clip" else set(LLM_TIMINGS)), name
        if mode != "clip":
            assert isinstance(doc["timings_ms"]["llm_output_tokens"], int)
    for name, word in bad.items():
        doc = sidecar(inbox, name)
        assert doc["status"] == "error"
        assert word in doc["error"]["message"]
        assert not names(inbox, name)[0].exists()
    produced = {p.name for p in inbox.iterdir()} - set(before)
    expected = {names(inbox, n)[1].name for n in [*good, *bad]} | {
        names(inbox, n)[0].name for n in good
    }
    assert produced == expected


def test_process_vision_mode_sends_images_only_to_the_vision_model(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """In vision mode each request carries exactly one image, to the configured vision model."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url, defaults={"mode": "vision"})
    make_good_images(tmp_path / "inbox")
    assert main(["process", str(tmp_path / "inbox"), "--config", str(config), "--no-progress"]) == 0
    chats = [r for r in fake_ollama.requests if r.path == "/api/chat" and r.body.get("messages")]
    assert chats
    for request in chats:
        assert request.body["model"] == "gemma3:4b"
        assert len(request.images()) == 1


def test_process_second_run_skips_up_to_date_images(
    inbox_world: Path, fake_ollama: FakeOllama
) -> None:
    """A second run touches nothing: every image is up to date (stat only), no model is asked."""
    inbox = inbox_world.parent / "inbox"
    main(["process", str(inbox), "--config", str(inbox_world), "--no-progress"])
    mtimes = {p.name: p.stat().st_mtime_ns for p in inbox.iterdir()}
    asked = len(fake_ollama.requests)
    assert main(["process", str(inbox), "--config", str(inbox_world), "--no-progress"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in inbox.iterdir()} == mtimes
    assert len(fake_ollama.requests) == asked


def test_process_changed_image_or_rule_or_force_is_redone(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """Touching an image redoes it; a new rule redoes its folder; --force redoes everything."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    good = make_good_images(inbox / "sub")
    shutil.copy(inbox / "sub" / "scene.png", inbox / "top.png")
    args = ["process", str(inbox), "--config", str(config), "--no-progress"]
    assert main(args) == 0
    created = {p: json.loads(p.read_text())["created_at"] for p in inbox.rglob("*.json")}

    os.utime(inbox / "top.png", ns=(1, 1))
    (inbox / "sub" / ".promptd.yaml").write_text("mode: clip\n")
    assert main(args) == 0
    after = {p: json.loads(p.read_text()) for p in inbox.rglob("*.json")}
    assert after[inbox / "top.json"]["created_at"] != created[inbox / "top.json"]
    for name in good:
        doc = after[names(inbox / "sub", name)[1]]
        assert doc["mode"] == "clip"
    assert main([*args, "--force"]) == 0
    forced = {p: json.loads(p.read_text())["created_at"] for p in inbox.rglob("*.json")}
    assert all(forced[p] != after[p]["created_at"] for p in forced)


def test_process_keeps_a_caption_it_did_not_write(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """A hand-written .txt stays as it is by default; the .json says it was kept."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = tmp_path / "inbox"
    make_good_images(inbox)
    (inbox / "scene.txt").write_text("my own caption, trigger\n", encoding="utf-8")
    assert main(["process", str(inbox), "--config", str(config), "--no-progress"]) == 0
    assert (inbox / "scene.txt").read_text("utf-8") == "my own caption, trigger\n"
    doc = sidecar(inbox, "scene.png")
    assert doc["outputs"]["txt_kept"] is True
    assert doc["outputs"]["txt"] is None


def test_process_two_images_with_one_stem_get_separate_sidecars(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """a.png and a.jpg never share a sidecar: both use the filename form."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = tmp_path / "inbox"
    good = make_good_images(tmp_path / "src")
    shutil.copy(tmp_path / "src" / "scene.png", inbox / "a.png")
    jpg = next(n for n in good if n.endswith(".jpg"))
    shutil.copy(tmp_path / "src" / jpg, inbox / "a.jpg")
    assert main(["process", str(inbox), "--config", str(config), "--no-progress"]) == 0
    for name in ("a.png", "a.jpg"):
        doc = json.loads((inbox / f"{name}.json").read_text())
        assert doc["image"]["file"] == name
        assert (inbox / f"{name}.txt").exists()
    assert not (inbox / "a.txt").exists() and not (inbox / "a.json").exists()


def test_process_trigger_words_come_first_and_the_line_fits_the_budget(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """The .txt starts with the trigger words and stays within max_prompt_tokens."""
    defaults = {"trigger_words": ["zxq person"], "prefix": "masterpiece", "max_prompt_tokens": 20}
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url, defaults=defaults)
    inbox = tmp_path / "inbox"
    make_good_images(inbox)
    assert main(["process", str(inbox), "--config", str(config), "--no-progress"]) == 0
    from daemon.config import ClipSettings
    from daemon.pipeline.analyze.clip import ClipAnalyzer

    counter = ClipAnalyzer(ClipSettings(model=str(tiny_clip_dir), offline=True), tmp_path / "c")
    for txt in inbox.glob("*.txt"):
        line = txt.read_text("utf-8").strip()
        assert line.startswith("zxq person, masterpiece")
        assert counter.count_tokens(line) <= 20


def test_process_ollama_down_gives_degraded_clip_results(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """With Ollama unreachable, every image still gets a prompt, marked degraded with the reason."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    fake_ollama.down()
    inbox = tmp_path / "inbox"
    good = make_good_images(inbox)
    assert main(["process", str(inbox), "--config", str(config), "--no-progress"]) == 0
    for name in good:
        doc = sidecar(inbox, name)
        assert doc["status"] == "degraded"
        assert doc["mode"] == "clip" and doc["requested_mode"] == "speed"
        assert (
            "reach" in doc["degraded_reason"].lower() or "connect" in doc["degraded_reason"].lower()
        )
        assert names(inbox, name)[0].read_text("utf-8").strip()


def test_process_missing_model_names_ollama_pull(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """A model that is not pulled degrades the result with the exact `ollama pull` to run."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    fake_ollama.missing.add("llama3.2:latest")
    inbox = tmp_path / "inbox"
    make_good_images(inbox)
    assert (
        main(["process", str(inbox / "scene.png"), "--config", str(config), "--no-progress"]) == 0
    )
    doc = sidecar(inbox, "scene.png")
    assert doc["status"] == "degraded"
    assert "ollama pull llama3.2" in doc["degraded_reason"]


def test_process_clip_unavailable_still_gives_degraded_results(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    """Without CLIP weights, images get a degraded result from their statistics; the reason names clip.model."""
    config = write_config(
        tmp_path, tmp_path / "no-such-clip", fake_ollama.url, defaults={"mode": "clip"}
    )
    inbox = tmp_path / "inbox"
    make_good_images(inbox)
    assert main(["process", str(inbox), "--config", str(config), "--no-progress"]) == 0
    doc = sidecar(inbox, "scene.png")
    assert doc["status"] == "degraded"
    assert "clip.model" in doc["degraded_reason"]
    assert doc["analysis"] == {}
    assert (inbox / "scene.txt").read_text("utf-8").strip()


def test_process_invalid_rule_holds_its_folder(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    """Images under a broken .promptd.yaml get no sidecars; the run fails and says why."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = tmp_path / "inbox"
    make_good_images(inbox / "held")
    make_good_images(inbox / "fine")
    (inbox / "held" / ".promptd.yaml").write_text("mode: turbo\n")
    assert main(["process", str(inbox), "--config", str(config), "--no-progress"]) == 1
    assert not list((inbox / "held").glob("*.json"))
    assert list((inbox / "fine").glob("*.json"))
    assert "held by invalid rules" in capsys.readouterr().out


def test_process_command_line_prints_a_summary(inbox_world: Path) -> None:
    """The console script runs as a subprocess, prints the summary and exits 1 when images failed."""
    inbox = inbox_world.parent / "inbox"
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "process", str(inbox), "--config", str(inbox_world)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "ok" in proc.stdout and "failed" in proc.stdout and "images/s" in proc.stdout
    assert "; LLM: " in proc.stdout and "model load" in proc.stdout and "tokens/s" in proc.stdout
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "image" and line.get("outcome") == "error" for line in lines)
