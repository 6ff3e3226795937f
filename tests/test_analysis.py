"""CLIP zero-shot analysis: label tables, the text-embedding cache and the analyzer.

The analyzer runs a tiny randomly initialised CLIP saved with save_pretrained (see
tests/tinyclip.py) and loaded through the same from_pretrained path as the real weights.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace, TracebackType

import pytest
import torch
from PIL import Image

from daemon.config import ClipSettings, LabelSettings
from daemon.errors import ConfigError, TransientError
from daemon.pipeline.analyze.cache import (
    SUBDIR,
    cache_key,
    load_embeddings,
    model_identity,
    save_embeddings,
)
from daemon.pipeline.analyze.clip import ClipAnalyzer, ClipUnavailableError, clip_input, top_labels
from daemon.pipeline.analyze.labels import DEFAULT_TABLES, label_tables
from daemon.pipeline.analyze.loading import features, resolve_device
from daemon.records import Analysis

SEED_TABLE_SIZES = {"style": 12, "mood": 10, "composition": 10, "color_palette": 10, "subjects": 15}


def images() -> list[Image.Image]:
    """Five small images that differ in colour, size, aspect and mode."""
    return [
        Image.new("RGB", (64, 64), (220, 30, 30)),
        Image.new("RGB", (90, 40), (20, 40, 200)),
        Image.linear_gradient("L").resize((48, 80)),
        Image.new("RGBA", (33, 33), (10, 200, 90, 128)),
        Image.radial_gradient("L").convert("RGB"),
    ]


def settings_with(clip_settings: ClipSettings, **changes: object) -> ClipSettings:
    """clip_settings with some fields (or labels fields) replaced."""
    labels = changes.pop("labels", None)
    update = dict(changes)
    if isinstance(labels, dict):
        update["labels"] = clip_settings.labels.model_copy(update=labels)
    return clip_settings.model_copy(update=update)


def as_scores(analysis: Analysis) -> dict[str, dict[str, float]]:
    """table -> label -> score, for comparisons that ignore order among near-ties."""
    return {name: {s.label: s.score for s in ranked} for name, ranked in analysis.items()}


def cache_files(cache_dir: Path) -> list[Path]:
    """The text-embedding cache entries under cache_dir."""
    return sorted((cache_dir / SUBDIR).glob("*.safetensors"))


class CountingLock:
    """A context manager that counts how often it is entered and whether it is held."""

    def __init__(self) -> None:
        self.entered = 0
        self.held = False

    def __enter__(self) -> CountingLock:
        self.entered += 1
        self.held = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.held = False


# --- label tables --------------------------------------------------------------------------


def test_label_tables_defaults_are_seed_000_tables_in_order() -> None:
    """Without settings, the five tables of seed 000 come back in its order and sizes."""
    tables = label_tables(LabelSettings())
    assert {name: len(labels) for name, labels in tables.items()} == SEED_TABLE_SIZES
    assert list(tables) == list(SEED_TABLE_SIZES)
    assert tables["style"][:3] == ("photorealistic", "digital art", "watercolor")
    assert tables["color_palette"][-1] == "neon colors"
    assert tables["subjects"][-1] == "indoor"


def test_label_tables_existing_name_extends_without_duplicates() -> None:
    """A table named like a default one appends only its new labels, in their order."""
    tables = label_tables(LabelSettings(tables={"mood": ("calm", " cozy ", "eerie", "cozy")}))
    assert tables["mood"] == (*DEFAULT_TABLES["mood"], "cozy", "eerie")
    assert tables["style"] == DEFAULT_TABLES["style"]


def test_label_tables_new_name_adds_table_after_defaults() -> None:
    """A table with a new name is scored too, after the built-in ones."""
    tables = label_tables(LabelSettings(tables={"lighting": ("golden hour", "studio light")}))
    assert list(tables) == [*SEED_TABLE_SIZES, "lighting"]
    assert tables["lighting"] == ("golden hour", "studio light")


def test_label_tables_replace_keeps_only_given_tables() -> None:
    """With replace, the built-in tables are dropped."""
    tables = label_tables(LabelSettings(replace=True, tables={"mood": ("calm", "tense")}))
    assert tables == {"mood": ("calm", "tense")}


def test_label_tables_empty_table_raises_config_error_naming_key() -> None:
    """A table with no usable label is a configuration error that names the table's key."""
    with pytest.raises(ConfigError, match=r"clip\.labels\.tables\.lighting"):
        label_tables(LabelSettings(tables={"lighting": ("  ",)}))


def test_label_tables_replace_without_tables_raises_config_error() -> None:
    """replace with no tables would leave nothing to score, so it is refused."""
    with pytest.raises(ConfigError, match=r"clip\.labels\.replace"):
        label_tables(LabelSettings(replace=True))


# --- pure helpers --------------------------------------------------------------------------


def test_top_labels_best_first_with_ties_in_table_order() -> None:
    """Labels are ranked by probability; equal ones keep table order; scores have 4 decimals."""
    ranked = top_labels(("a", "b", "c", "d"), [0.2, 0.4, 0.2, 0.123456], 3)
    assert [(s.label, s.score) for s in ranked] == [("b", 0.4), ("a", 0.2), ("c", 0.2)]


def test_clip_input_trims_extreme_panoramas_to_their_middle() -> None:
    """A 10x1000 strip keeps its middle 10x80; ordinary images pass through as RGB."""
    strip = Image.new("RGB", (10, 1000), (0, 0, 0))
    strip.paste((255, 255, 255), (0, 460, 10, 540))
    trimmed = clip_input(strip)
    assert trimmed.size == (10, 80)
    assert trimmed.getextrema() == ((255, 255), (255, 255), (255, 255))
    assert clip_input(Image.new("RGB", (1000, 20))).size == (160, 20)
    photo = Image.new("RGB", (300, 200))
    assert clip_input(photo) is photo
    assert clip_input(Image.new("L", (30, 20))).mode == "RGB"


def test_features_accepts_tensor_and_output_object_of_right_width() -> None:
    """Both transformers 4 (tensor) and 5 (output object) feature results are understood."""
    tensor = torch.ones(2, 4)
    assert features(tensor, 4) is tensor
    assert features(SimpleNamespace(pooler_output=tensor), 4) is tensor
    with pytest.raises(ClipUnavailableError, match="transformers"):
        features(SimpleNamespace(pooler_output=torch.ones(2, 8)), 4)


def test_resolve_device_auto_cpu_cuda_and_bad_names() -> None:
    """auto follows CUDA availability; cuda without CUDA is unavailable; nonsense is a config error."""
    assert resolve_device("auto", cuda_available=False) == "cpu"
    assert resolve_device("auto", cuda_available=True) == "cuda"
    assert resolve_device("cuda:1", cuda_available=True) == "cuda:1"
    with pytest.raises(ClipUnavailableError, match=r"clip\.device"):
        resolve_device("cuda", cuda_available=False)
    with pytest.raises(ConfigError, match=r"clip\.device"):
        resolve_device("gpu0", cuda_available=True)


def test_cache_key_changes_with_labels_model_and_precision() -> None:
    """Any change to a label, the model or the precision gives another cache entry."""
    base = cache_key("m", {"mood": ("calm", "tense")}, "float32")
    assert base == cache_key("m", {"mood": ("calm", "tense")}, "float32")
    assert base != cache_key("m", {"mood": ("calm", "dark")}, "float32")
    assert base != cache_key("m2", {"mood": ("calm", "tense")}, "float32")
    assert base != cache_key("m", {"mood": ("calm", "tense")}, "float16")


def test_model_identity_of_folder_changes_when_weights_change(tmp_path: Path) -> None:
    """Replacing the weights in a local model folder changes its identity (and so the key)."""
    (tmp_path / "model.safetensors").write_bytes(b"one")
    before = model_identity(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert model_identity(str(tmp_path)) != before
    assert model_identity("org/name", "abc") != model_identity("org/name", "def")


def test_load_embeddings_for_other_labels_returns_none(tmp_path: Path) -> None:
    """An entry whose stored labels differ from the requested tables is not used."""
    tables = {"mood": ("calm", "tense")}
    save_embeddings(tmp_path, "k", "m", tables, {"mood": torch.eye(2)})
    assert load_embeddings(tmp_path, "k", tables) is not None
    assert load_embeddings(tmp_path, "k", {"mood": ("calm", "dark")}) is None


# --- the analyzer ---------------------------------------------------------------------------


def test_clip_analyzer_tiny_model_ranks_every_default_table(clip_analyzer: ClipAnalyzer) -> None:
    """Each image gets top_k labels per default table, from that table, scores in [0,1], best first."""
    assert not clip_analyzer.loaded
    results = clip_analyzer.analyze(images())
    assert clip_analyzer.loaded
    assert clip_analyzer.device == "cpu"
    assert len(results) == 5
    for analysis in results:
        assert list(analysis) == list(SEED_TABLE_SIZES)
        for name, ranked in analysis.items():
            assert len(ranked) == 3
            assert {s.label for s in ranked} <= set(DEFAULT_TABLES[name])
            scores = [s.score for s in ranked]
            assert all(0.0 <= score <= 1.0 for score in scores)
            assert scores == sorted(scores, reverse=True)


def test_clip_analyzer_scores_are_a_softmax_within_each_table(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """With top_k above a table's size, every label comes back and the scores sum to 1."""
    analyzer = ClipAnalyzer(settings_with(clip_settings, labels={"top_k": 20}), tmp_path)
    (analysis,) = analyzer.analyze(images()[:1])
    for name, ranked in analysis.items():
        assert len(ranked) == SEED_TABLE_SIZES[name]
        assert sum(s.score for s in ranked) == pytest.approx(1.0, abs=1e-3)


def test_clip_analyzer_matches_seed_full_model_call(
    clip_analyzer: ClipAnalyzer, tiny_clip_dir: Path
) -> None:
    """Scores equal seed 000's logits_per_image.softmax from a full CLIPModel call per table.

    The second image is a 1:12 strip, which the analyzer trims to its middle first.
    """
    from transformers import AutoImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(tiny_clip_dir, local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip_dir)
    processor = AutoImageProcessor.from_pretrained(tiny_clip_dir)
    strip = Image.linear_gradient("L").resize((16, 192)).convert("RGB")
    for image in (images()[0], strip):
        (ours,) = clip_analyzer.analyze([image])
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        for name, labels in DEFAULT_TABLES.items():
            text = tokenizer(list(labels), padding=True, return_tensors="pt")
            with torch.inference_mode():
                out = model(pixel_values=pixels, **text)
            probs = out.logits_per_image.softmax(dim=1)[0]
            seed = {labels[int(i)]: float(probs[i]) for i in torch.topk(probs, k=3).indices}
            assert as_scores(ours)[name] == pytest.approx(seed, abs=2e-4)


def test_clip_analyzer_batched_equals_one_image_at_a_time(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """Chunks of batch_size give the same result per image as analysing each image alone."""
    analyzer = ClipAnalyzer(settings_with(clip_settings, batch_size=2), tmp_path)
    batched = analyzer.analyze(images())
    alone = [analyzer.analyze([image])[0] for image in images()]
    for together, single in zip(batched, alone, strict=True):
        assert as_scores(together).keys() == as_scores(single).keys()
        for name, scores in as_scores(together).items():
            assert scores == pytest.approx(as_scores(single)[name], abs=2e-4)


def test_clip_analyzer_extreme_aspect_image_is_analyzed(clip_analyzer: ClipAnalyzer) -> None:
    """A 2x20000 strip is scored like any image (its middle), without a huge resize."""
    (analysis,) = clip_analyzer.analyze([Image.new("RGB", (2, 20000), (200, 200, 0))])
    assert list(analysis) == list(SEED_TABLE_SIZES)


def test_clip_analyzer_no_images_returns_empty_without_loading(
    clip_analyzer: ClipAnalyzer,
) -> None:
    """An empty batch does not load the model."""
    assert clip_analyzer.analyze([]) == []
    assert not clip_analyzer.loaded


def test_clip_analyzer_holds_gpu_lock_for_load_and_each_chunk(
    clip_settings: ClipSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU, the GPU lock is taken once to load and once per chunk, and released
    afterwards (the device is simulated: the tiny model still computes on the CPU)."""
    monkeypatch.setattr(ClipAnalyzer, "device", property(lambda self: "cuda"))
    lock = CountingLock()
    analyzer = ClipAnalyzer(settings_with(clip_settings, batch_size=2), tmp_path, gpu_lock=lock)
    analyzer.analyze(images())
    assert lock.entered == 1 + 3
    assert not lock.held


def test_clip_analyzer_on_the_cpu_takes_no_gpu_turns(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """CLIP on the CPU takes nothing from the LLM's GPU: it never waits for the lock."""
    lock = CountingLock()
    analyzer = ClipAnalyzer(settings_with(clip_settings, batch_size=2), tmp_path, gpu_lock=lock)
    assert analyzer.device == "cpu"
    assert len(analyzer.analyze(images())) == len(images())
    assert lock.entered == 0


def test_clip_analyzer_second_analyzer_reuses_cached_embeddings(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """Label embeddings are computed once, written once, and read back by the next analyzer."""
    first = ClipAnalyzer(clip_settings, tmp_path)
    first.load()
    (entry,) = cache_files(tmp_path)
    written = entry.stat().st_mtime_ns
    second = ClipAnalyzer(clip_settings, tmp_path)
    second.load()
    assert (first.text_embeddings_computed, second.text_embeddings_computed) == (1, 0)
    assert cache_files(tmp_path) == [entry]
    assert entry.stat().st_mtime_ns == written
    image = images()[:1]
    assert as_scores(second.analyze(image)[0]) == as_scores(first.analyze(image)[0])


def test_clip_analyzer_changed_labels_make_new_cache_entry(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """Adding a label is a new cache entry, computed once; the new label can be ranked."""
    ClipAnalyzer(clip_settings, tmp_path).load()
    extended = settings_with(clip_settings, labels={"tables": {"mood": ("cozy",)}, "top_k": 20})
    analyzer = ClipAnalyzer(extended, tmp_path)
    (analysis,) = analyzer.analyze(images()[:1])
    assert analyzer.text_embeddings_computed == 1
    assert len(cache_files(tmp_path)) == 2
    assert "cozy" in {s.label for s in analysis["mood"]}


def test_clip_analyzer_corrupt_cache_file_is_rebuilt(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """A damaged cache entry is ignored, recomputed and rewritten; results are unchanged."""
    first = ClipAnalyzer(clip_settings, tmp_path)
    expected = as_scores(first.analyze(images()[:1])[0])
    (entry,) = cache_files(tmp_path)
    entry.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    second = ClipAnalyzer(clip_settings, tmp_path)
    assert as_scores(second.analyze(images()[:1])[0]) == expected
    assert second.text_embeddings_computed == 1
    third = ClipAnalyzer(clip_settings, tmp_path)
    third.load()
    assert third.text_embeddings_computed == 0


def test_clip_analyzer_unwritable_cache_still_analyzes(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """When the cache folder cannot be created the analysis still runs (the cache is optional)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    analyzer = ClipAnalyzer(clip_settings, blocker)
    assert len(analyzer.analyze(images()[:1])) == 1
    assert analyzer.text_embeddings_computed == 1


def test_clip_analyzer_concurrent_load_loads_once(
    clip_settings: ClipSettings, tmp_path: Path
) -> None:
    """Threads calling load() at once share one load and one label encoding."""
    analyzer = ClipAnalyzer(clip_settings, tmp_path)
    threads = [threading.Thread(target=analyzer.load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert analyzer.loaded
    assert analyzer.text_embeddings_computed == 1


def test_clip_analyzer_release_unloads_and_next_analyze_reloads(
    clip_analyzer: ClipAnalyzer,
) -> None:
    """release() frees the model; the next analyze() loads it again from the cache."""
    clip_analyzer.load()
    clip_analyzer.release()
    assert not clip_analyzer.loaded
    assert len(clip_analyzer.analyze(images()[:1])) == 1
    assert clip_analyzer.text_embeddings_computed == 1


def test_clip_analyzer_missing_model_folder_raises_unavailable_naming_setting(
    tmp_path: Path,
) -> None:
    """A clip.model folder that does not exist is a transient 'CLIP unavailable' naming clip.model."""
    missing = tmp_path / "models" / "clip"
    analyzer = ClipAnalyzer(ClipSettings(model=str(missing), device="cpu"), tmp_path / "cache")
    with pytest.raises(ClipUnavailableError, match=r"clip\.model") as caught:
        analyzer.analyze(images()[:1])
    assert isinstance(caught.value, TransientError)
    assert caught.value.path == missing
    assert not analyzer.loaded


def test_clip_analyzer_folder_without_weights_raises_unavailable(tmp_path: Path) -> None:
    """A folder with no model files cannot load; the error says to fix clip.model."""
    empty = tmp_path / "empty-model"
    empty.mkdir()
    analyzer = ClipAnalyzer(ClipSettings(model=str(empty), device="cpu"), tmp_path / "cache")
    with pytest.raises(ClipUnavailableError, match=r"could not be loaded .*clip\.model"):
        analyzer.load()
    with pytest.raises(ClipUnavailableError, match="tokenizer"):
        analyzer.count_tokens("warm tones")


def test_clip_analyzer_offline_hub_id_not_in_cache_raises_unavailable(tmp_path: Path) -> None:
    """Offline, a hub id that was never downloaded is unavailable (and nothing is fetched)."""
    settings = ClipSettings(model="promptd-tests/no-such-clip", device="cpu", offline=True)
    analyzer = ClipAnalyzer(settings, tmp_path)
    with pytest.raises(ClipUnavailableError, match="promptd-tests/no-such-clip"):
        analyzer.load()


def test_clip_analyzer_count_tokens_counts_words_without_specials(
    clip_analyzer: ClipAnalyzer,
) -> None:
    """Known words are one token each, punctuation counts, start/end markers do not; no weights load."""
    assert clip_analyzer.count_tokens("") == 0
    assert clip_analyzer.count_tokens("warm tones") == 2
    assert clip_analyzer.count_tokens("warm tones, oil painting") == 5
    assert clip_analyzer.count_tokens("Warm   TONES") == 2
    assert not clip_analyzer.loaded


@pytest.mark.real_clip
@pytest.mark.skipif(
    not os.environ.get("PROMPTD_REAL_CLIP"),
    reason="set PROMPTD_REAL_CLIP to a CLIP hub id or folder to run",
)
def test_clip_analyzer_real_weights_red_square_reads_as_warm_or_vivid(tmp_path: Path) -> None:
    """With real CLIP weights, a plain red square ranks a warm/vivid colour label in the top 3."""
    settings = ClipSettings(model=os.environ["PROMPTD_REAL_CLIP"])
    analyzer = ClipAnalyzer(settings, tmp_path)
    (analysis,) = analyzer.analyze([Image.new("RGB", (256, 256), (230, 20, 20))])
    top = {s.label for s in analysis["color_palette"]}
    assert top & {"warm tones", "vibrant colors", "neon colors"}
    assert analyzer.count_tokens("warm tones") == 2
