"""clip_prompt: the prefix encoder, the classic picks, the greedy chain, the 77-token window and
the phrase-embedding cache, on the tiny CLIP.

The expected phrases are derived in each test from the tiny model itself (its own text and
image embeddings, through ``get_text_features`` on whole prompts), so a wrong ranking, a wrong
order or a chain that does not follow the similarity fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from daemon.config import ClipSettings
from daemon.pipeline.analyze.clip import ClipAnalyzer
from daemon.pipeline.analyze.prefix import PrefixEncoder, adopt
from tests.test_analysis import CountingLock

TABLES = {
    "mediums": ["watercolor", "oil painting", "sketch", "pixel art", "digital art"],
    "movements": ["modern", "vintage", "abstract"],
    "lighting": ["bright light", "dark night", "sunset light"],
    "camera": ["close-up", "wide angle", "aerial view"],
    "flavors": ["calm", "tense", "joyful", "dramatic", "romantic", "mysterious", "pastel"],
}
IMAGES = [
    Image.new("RGB", (64, 64), (220, 30, 30)),
    Image.linear_gradient("L").resize((48, 80)).convert("RGB"),
    Image.radial_gradient("L").convert("RGB"),
]


def vocab_files(folder: Path, tables: dict[str, list[str]]) -> dict[str, str]:
    """Write each table to a file; the clip.vocabularies mapping that names them."""
    folder.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for name, phrases in tables.items():
        path = folder / f"{name}.txt"
        path.write_text("\n".join(phrases) + "\n", encoding="utf-8")
        mapping[name] = str(path)
    return mapping


def analyzer_for(
    clip_settings: ClipSettings, tmp_path: Path, tables: dict[str, list[str]], **changes: object
) -> ClipAnalyzer:
    """An analyzer over the tiny CLIP whose clip_prompt tables are exactly ``tables``."""
    lock = changes.pop("lock", None)
    settings = clip_settings.model_copy(
        update={"vocabularies": vocab_files(tmp_path / "vocab", tables), **changes}
    )
    return ClipAnalyzer(settings, tmp_path / "cache", gpu_lock=lock)  # type: ignore[arg-type]


def text_embeddings(analyzer: ClipAnalyzer, texts: list[str]) -> torch.Tensor:
    """The model's own normalised text features for whole texts (the reference)."""
    return analyzer.encode_texts(texts)


def expected_classic(analyzer: ClipAnalyzer, caption: str, image: torch.Tensor) -> list[str]:
    """The classic picks derived from the model: best of each table, three best flavours."""
    parts = [caption]
    for name, count in (
        ("mediums", 1),
        ("movements", 1),
        ("lighting", 1),
        ("camera", 1),
        ("flavors", 3),
    ):
        sims = text_embeddings(analyzer, TABLES[name]) @ image
        ranked = [TABLES[name][i] for i in torch.argsort(sims, descending=True).tolist()]
        parts += ranked[:count]
    return parts


def test_prefix_encoder_equals_the_models_text_features(clip_analyzer: ClipAnalyzer) -> None:
    """Keeping a prompt's keys and values and running only the suffix gives get_text_features."""
    clip_analyzer.load()
    model = clip_analyzer._ensure_loaded().model
    encoder = PrefixEncoder(model)
    ((bos, eos),) = clip_analyzer.token_ids([""], markers=True)
    base = "a photo of a red cat"
    suffixes = [", oil painting", ", dark mood in the city", ", zq"]
    state = encoder.start([bos, *clip_analyzer.token_ids([base])[0]])
    rows = [[*ids, eos] for ids in clip_analyzer.token_ids(suffixes)]
    ours, fresh = encoder.embed_after(state, rows)
    theirs = text_embeddings(clip_analyzer, [base + s for s in suffixes])
    assert torch.allclose(ours, theirs, atol=1e-5)
    longer = adopt(state, fresh, 1, rows[1][:-1])  # the second suffix kept, no forward pass
    (after,), _ = encoder.embed_after(longer, [rows[0]])
    (whole,) = text_embeddings(clip_analyzer, [base + suffixes[1] + suffixes[0]])
    assert torch.allclose(after, whole, atol=1e-5)


def test_clip_prompt_classic_picks_the_closest_phrase_of_each_table(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """Without a chain: the caption, then the best medium, movement, lighting, camera phrase and
    the three best flavours, in that order, as the model's own similarities rank them."""
    analyzer = analyzer_for(clip_settings, tmp_path, TABLES, chain_steps=0)
    for seen in analyzer.analyze_embedded(IMAGES):
        assert seen.embedding is not None
        prompt = analyzer.clip_prompt("a cat", seen.embedding)
        assert prompt.split(", ") == expected_classic(analyzer, "a cat", seen.embedding)


def test_clip_prompt_classic_skips_a_phrase_the_caption_already_has(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """A medium the caption names already is not repeated; the next best one is taken."""
    analyzer = analyzer_for(clip_settings, tmp_path, TABLES, chain_steps=0)
    (seen,) = analyzer.analyze_embedded(IMAGES[:1])
    assert seen.embedding is not None
    best = expected_classic(analyzer, "a cat", seen.embedding)[1]
    prompt = analyzer.clip_prompt(f"a {best} of a cat", seen.embedding).split(", ")
    assert best not in prompt[1:]
    assert prompt[1] in TABLES["mediums"]


def test_clip_prompt_chain_adds_the_phrase_that_raises_similarity_most_each_step(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """With every candidate encoded each step, the chain is the exact greedy search over whole
    prompts: each added phrase is the one whose prompt the image is closest to, and it stops
    when no phrase raises the similarity."""
    analyzer = analyzer_for(clip_settings, tmp_path, TABLES, chain_steps=4, chain_width=64)
    everything = [p for phrases in TABLES.values() for p in phrases]
    grew = 0
    for seen in analyzer.analyze_embedded(IMAGES):
        assert seen.embedding is not None
        image = seen.embedding
        parts = classic = expected_classic(analyzer, "a cat", image)
        score = float(text_embeddings(analyzer, [", ".join(parts)])[0] @ image)
        for _ in range(4):
            left = [p for p in everything if not any(p in part for part in parts)]
            sims = text_embeddings(analyzer, [", ".join([*parts, p]) for p in left]) @ image
            best = int(torch.argmax(sims))
            if float(sims[best]) <= score:
                break
            parts, score = [*parts, left[best]], float(sims[best])
        assert analyzer.clip_prompt("a cat", image).split(", ") == parts
        grew += len(parts) > len(classic)
    assert grew >= 1  # the chain added a phrase somewhere, so the comparison above means something


def test_clip_prompt_never_exceeds_the_77_token_window(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """Long phrases and a long caption: the prompt stays within 75 tokens (plus the markers),
    counted with the model's own tokenizer, and still starts with the caption's first words."""
    long_tables = {
        name: [f"{word} zqxv wkjh plmn trbs" for word in phrases]
        for name, phrases in TABLES.items()
    }
    analyzer = analyzer_for(clip_settings, tmp_path, long_tables, chain_steps=8, chain_width=8)
    caption = " ".join(["lighthouse"] * 10 + ["on a rocky shore at dusk"] * 8)
    for seen in analyzer.analyze_embedded(IMAGES):
        assert seen.embedding is not None
        for text in (caption, "a cat"):
            prompt = analyzer.clip_prompt(text, seen.embedding)
            assert 0 < analyzer.count_tokens(prompt) <= 75
            assert prompt.startswith(text.split()[0])


def test_clip_prompt_phrase_embeddings_are_cached_across_analyzers(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """The first analyzer encodes each table once; the next one reads them all from the cache
    and builds the same prompt; editing one file recomputes only that table."""
    first = analyzer_for(clip_settings, tmp_path, TABLES)
    (seen,) = first.analyze_embedded(IMAGES[:1])
    assert seen.embedding is not None
    prompt = first.clip_prompt("a cat", seen.embedding)
    assert first.interrogator is not None and first.interrogator.tables_computed == len(TABLES)
    second = analyzer_for(clip_settings, tmp_path, TABLES)
    assert second.clip_prompt("a cat", seen.embedding) == prompt
    assert second.interrogator is not None and second.interrogator.tables_computed == 0
    edited = {**TABLES, "camera": [*TABLES["camera"], "from above"]}
    third = analyzer_for(clip_settings, tmp_path, edited)
    third.clip_prompt("a cat", seen.embedding)
    assert third.interrogator is not None and third.interrogator.tables_computed == 1


def test_clip_prompt_costs_a_few_text_forwards_under_the_gpu_lock(
    clip_settings: ClipSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the tables are loaded, a prompt costs at most chain_steps + 1 text-tower passes
    (the prompt with its own similarity, then one per step), each under the GPU lock (on a
    GPU, simulated here: the tiny model computes on the CPU)."""
    monkeypatch.setattr(ClipAnalyzer, "device", property(lambda self: "cuda"))
    lock = CountingLock()
    analyzer = analyzer_for(clip_settings, tmp_path, TABLES, chain_steps=3, lock=lock)
    (seen,) = analyzer.analyze_embedded(IMAGES[:1])
    assert seen.embedding is not None
    analyzer.clip_prompt("a cat", seen.embedding)  # loads the tables
    interrogator = analyzer.interrogator
    assert interrogator is not None
    forwards, entered = interrogator.text_forwards, lock.entered
    analyzer.clip_prompt("a dog", seen.embedding)
    made = interrogator.text_forwards - forwards
    assert 1 <= made <= 3 + 1
    assert lock.entered - entered >= made
    assert not lock.held


def test_clip_prompt_with_promptds_own_lists_uses_only_their_phrases(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """The shipped vocabularies load as package data; the prompt's phrases come from them, and
    artists stay out by default (flavors is off here only to keep the test quick)."""
    from daemon.pipeline.analyze.vocab import load_vocabularies

    settings = clip_settings.model_copy(update={"vocabularies": {"flavors": "off"}})
    analyzer = ClipAnalyzer(settings, tmp_path / "cache")
    tables = load_vocabularies(settings)
    assert list(tables) == ["mediums", "movements", "lighting", "camera"]
    known = {p for phrases in tables.values() for p in phrases}
    (seen,) = analyzer.analyze_embedded(IMAGES[:1])
    assert seen.embedding is not None
    caption, *phrases = analyzer.clip_prompt("a cat", seen.embedding).split(", ")
    assert caption == "a cat" and len(phrases) >= 3
    assert set(phrases) <= known
    assert not any(p.startswith("by ") for p in phrases)


@pytest.mark.parametrize("steps", [0, 4])
def test_clip_prompt_is_deterministic(
    clip_settings: ClipSettings, tmp_path: Path, steps: int
) -> None:
    """The same image and caption give the same prompt twice."""
    analyzer = analyzer_for(clip_settings, tmp_path, TABLES, chain_steps=steps)
    (seen,) = analyzer.analyze_embedded(IMAGES[1:2])
    assert seen.embedding is not None
    assert analyzer.clip_prompt("x", seen.embedding) == analyzer.clip_prompt("x", seen.embedding)
