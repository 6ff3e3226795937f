"""Training sets end to end through `promptd process`: the folder's hint, clip_prompt and
caption_from, tags, on the tiny CLIP and the fake Ollama server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.config import ClipSettings
from daemon.pipeline.analyze.clip import ClipAnalyzer
from tests.fake_ollama import FakeOllama
from tests.images import make_good_images
from tests.test_clip_prompt import TABLES, vocab_files
from tests.test_process import names, sidecar, write_config

HINT = "all photos show the Acme Runner shoe; name the colourway"


def configure(tmp_path: Path, clip_dir: Path, url: str, **defaults: Any) -> Path:
    """A config with small phrase tables (quick to embed) and the given rule defaults."""
    vocabularies = vocab_files(tmp_path / "vocab", TABLES)
    return write_config(
        tmp_path, clip_dir, url, defaults=defaults, clip={"vocabularies": vocabularies}
    )


def process(config: Path, target: Path) -> int:
    return main(["process", str(target), "--config", str(config), "--no-progress"])


def user_messages(fake: FakeOllama) -> list[str]:
    """The user message of every chat request the fake server got, in order."""
    return [
        next(m["content"] for m in reversed(r.body["messages"]) if m["role"] == "user")
        for r in fake.requests
        if r.path == "/api/chat" and r.body.get("messages")
    ]


def test_process_folder_hint_reaches_ollama_after_the_rules_and_redoes_only_its_folder(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """A folder's hint is in its images' requests, after promptd's rules and the evidence and
    fenced apart, recorded with hint_used; editing it redoes that folder and no other."""
    config = configure(tmp_path, tiny_clip_dir, fake_ollama.url, mode="speed")
    inbox = tmp_path / "inbox"
    shoes, other = make_good_images(inbox / "shoes"), make_good_images(inbox / "other")
    (inbox / "shoes" / ".promptd.yaml").write_text(f"hint: {HINT}\n", encoding="utf-8")
    assert process(config, inbox) == 0
    asked = user_messages(fake_ollama)
    with_hint = [m for m in asked if HINT in m]
    assert len(with_hint) == len(shoes) and len(asked) == len(shoes) + len(other)
    for message in with_hint:
        fence = message.index(f"<user_instructions>\n{HINT}\n</user_instructions>")
        assert message.index("What a CLIP zero-shot classifier found") < fence
        assert message.rstrip().endswith("</user_instructions>")
    systems = {
        m["content"]
        for r in fake_ollama.requests
        if r.path == "/api/chat" and r.body.get("messages")
        for m in r.body["messages"]
        if m["role"] == "system"
    }
    # promptd's rules come first, in one system message shared by every image (the hint is
    # the folder's, so it never changes the shared prefix)
    assert len(systems) == 1 and "Rules for the prompt" in next(iter(systems))
    for name in shoes:
        doc = sidecar(inbox / "shoes", name)
        assert doc["hint_used"] is True and doc["rule"]["settings"]["hint"] == HINT
    assert all(sidecar(inbox / "other", n)["hint_used"] is False for n in other)

    before = {p: p.stat().st_mtime_ns for p in (inbox / "other").glob("*.json")}
    edited = "never mention the background"
    (inbox / "shoes" / ".promptd.yaml").write_text(f"hint: {edited}\n", encoding="utf-8")
    assert process(config, inbox) == 0
    again = user_messages(fake_ollama)[len(asked) :]
    assert len(again) == len(shoes) and all(edited in m for m in again)
    assert {p: p.stat().st_mtime_ns for p in (inbox / "other").glob("*.json")} == before


def test_process_clip_mode_records_the_hint_as_unused(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """In clip mode nothing reads the hint: it is recorded in the rule, hint_used is false."""
    config = configure(tmp_path, tiny_clip_dir, fake_ollama.url, mode="clip", hint=HINT)
    inbox = tmp_path / "inbox"
    good = make_good_images(inbox)
    assert process(config, inbox) == 0
    assert user_messages(fake_ollama) == []
    for name in good:
        doc = sidecar(inbox, name)
        assert doc["hint_used"] is False and doc["rule"]["settings"]["hint"] == HINT


def test_process_clip_prompt_without_an_llm_is_recorded_and_fits_the_window(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """clip_prompt: true in clip mode: the record gets a clip_prompt starting with the top
    subject label, within 75 CLIP tokens, from the configured tables; the .txt keeps the
    mode's prompt, which is also the record's mode_prompt."""
    config = configure(tmp_path, tiny_clip_dir, fake_ollama.url, mode="clip", clip_prompt=True)
    inbox = tmp_path / "inbox"
    good = make_good_images(inbox)
    assert process(config, inbox) == 0
    counter = ClipAnalyzer(ClipSettings(model=str(tiny_clip_dir), offline=True), tmp_path / "c")
    phrases = {p for table in TABLES.values() for p in table}
    for name in good:
        doc = sidecar(inbox, name)
        assert doc["status"] == "ok", doc["degraded_reason"]
        caption, *picked = doc["clip_prompt"].split(", ")
        top_subject = max(doc["analysis"]["subjects"], key=lambda s: s["score"])["label"]
        assert caption == top_subject
        assert picked and set(picked) <= phrases
        assert counter.count_tokens(doc["clip_prompt"]) <= 75
        assert doc["prompt"].startswith(doc["mode_prompt"].split(", ")[0])
        assert names(inbox, name)[0].read_text("utf-8").rstrip("\n") == doc["prompt"]


def test_process_caption_from_clip_prompt_builds_the_txt_from_it(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """caption_from: clip_prompt (without clip_prompt: true) puts the trigger words and then the
    clip_prompt into the .txt; the LLM's prompt stays in mode_prompt."""
    config = configure(
        tmp_path,
        tiny_clip_dir,
        fake_ollama.url,
        mode="speed",
        caption_from="clip_prompt",
        trigger_words=["zxq"],
        max_prompt_tokens=200,
    )
    inbox = tmp_path / "inbox"
    good = make_good_images(inbox)
    assert process(config, inbox) == 0
    for name in good:
        doc = sidecar(inbox, name)
        assert doc["clip_prompt"] and doc["mode_prompt"] != doc["clip_prompt"]
        assert doc["prompt"] == f"zxq, {doc['clip_prompt']}"
        # the LLM wrote a prompt: clip_prompt starts with its first phrase
        assert doc["clip_prompt"].split(", ")[0] == doc["mode_prompt"].split(", ")[0]


def test_process_quality_mode_clip_prompt_starts_with_the_brief_caption_and_fills_context(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """With an English brief caption, clip_prompt starts with it, and the seed-001 context
    field clip_prompt is the record's clip_prompt."""
    config = configure(
        tmp_path,
        tiny_clip_dir,
        fake_ollama.url,
        mode="quality",
        language="English",
        clip_prompt=True,
    )
    inbox = tmp_path / "inbox"
    good = make_good_images(inbox)
    assert process(config, inbox) == 0
    for name in good:
        doc = sidecar(inbox, name)
        brief = " ".join(doc["context"]["brief_caption"].replace(",", " ").split()).rstrip(" .")
        assert doc["clip_prompt"].startswith(brief[:20])
        assert doc["context"]["clip_prompt"] == doc["clip_prompt"]


def test_process_without_clip_prompt_records_null_and_keeps_the_quick_context_field(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """By default no clip_prompt is built; quality mode keeps its label-table tag prompt."""
    config = configure(tmp_path, tiny_clip_dir, fake_ollama.url, mode="quality")
    inbox = tmp_path / "inbox"
    make_good_images(inbox)
    assert process(config, inbox / "scene.png") == 0
    doc = sidecar(inbox, "scene.png")
    assert doc["clip_prompt"] is None
    assert doc["context"]["clip_prompt"]


def test_process_clip_prompt_uses_the_analysis_image_embedding(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    """clip_prompt needs no second vision forward: one image pass per image, as without it."""
    from transformers import CLIPModel

    calls: list[int] = []
    original = CLIPModel.get_image_features

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["pixel_values"].shape[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CLIPModel, "get_image_features", counted)
    config = configure(tmp_path, tiny_clip_dir, fake_ollama.url, mode="clip", clip_prompt=True)
    inbox = tmp_path / "inbox"
    good = make_good_images(inbox)
    assert process(config, inbox) == 0
    assert sum(calls) == len(good)
    assert all(sidecar(inbox, n)["clip_prompt"] for n in good)


def test_process_bad_vocabulary_file_degrades_and_names_it(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """A phrase file that cannot be used leaves clip_prompt null; the record is degraded and
    says which file; the .txt is the mode's prompt."""
    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"\xff\xfe\x00")
    config = write_config(
        tmp_path,
        tiny_clip_dir,
        fake_ollama.url,
        defaults={"mode": "clip", "clip_prompt": True},
        clip={"vocabularies": {"flavors": str(broken)}},
    )
    inbox = tmp_path / "inbox"
    make_good_images(inbox)
    assert process(config, inbox / "scene.png") == 0
    doc = sidecar(inbox, "scene.png")
    assert doc["status"] == "degraded" and doc["clip_prompt"] is None
    assert "broken.txt" in doc["degraded_reason"] and "UTF-8" in doc["degraded_reason"]
    assert doc["prompt"].startswith(doc["mode_prompt"].split(", ")[0])


@pytest.mark.parametrize(("threshold", "expect_all"), [(0.0, True), (1.0, False)])
def test_process_tags_are_the_labels_above_the_threshold(
    tmp_path: Path,
    tiny_clip_dir: Path,
    fake_ollama: FakeOllama,
    threshold: float,
    expect_all: bool,
) -> None:
    """tag_threshold 0 tags every analysed label (each once, best first); 1 tags none."""
    config = configure(
        tmp_path, tiny_clip_dir, fake_ollama.url, mode="clip", tag_threshold=threshold
    )
    inbox = tmp_path / "inbox"
    make_good_images(inbox)
    assert process(config, inbox / "scene.png") == 0
    doc = sidecar(inbox, "scene.png")
    scored = sorted(
        ((s["score"], s["label"]) for ranked in doc["analysis"].values() for s in ranked),
        key=lambda pair: -pair[0],
    )
    labels = list(dict.fromkeys(label for _, label in scored))
    assert doc["tags"] == (labels if expect_all else [])
    assert json.dumps(doc["tags"]).count(",") == max(len(doc["tags"]) - 1, 0)
