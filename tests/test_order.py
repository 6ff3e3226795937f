"""Model-aware order: the queue's per-model lanes, switch_after_s, and `process`'s sort."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import structlog

from daemon.cli import main
from daemon.config import Config, load_config
from daemon.config.rules import RuleResolver
from daemon.doctor import check_parallel
from daemon.errors import ConfigError
from daemon.pipeline import Context
from daemon.pipeline.compose.modes import Composer
from daemon.pipeline.order import by_model, clip_may_run_ahead, model_for
from daemon.service.queue import JobQueue, RetrySchedule
from tests.daemon_helpers import write_images
from tests.fake_ollama import FakeOllama
from tests.test_process import write_config


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def model_of(path: Path) -> str | None:
    """The test's classifier: the folder names the model; ``clip`` needs none."""
    folder = path.parent.name
    return None if folder == "clip" else folder


def lane_queue(
    switch_after_s: float, clock: FakeClock, maxsize: int = 1000, **kw: object
) -> JobQueue:
    return JobQueue(
        maxsize,
        clock=clock,
        classify=model_of,
        switch_after_s=lambda: switch_after_s,
        **kw,  # type: ignore[arg-type]
    )


def drain(q: JobQueue, batch: int, clock: FakeClock | None = None, step: float = 0.0) -> list[Path]:
    """Every ready path, taken ``batch`` at a time (the clock moved ``step`` per batch)."""
    taken: list[Path] = []
    while len(q):
        got = q.get_batch(batch, timeout=0)
        assert got
        taken.extend(got)
        for path in got:
            q.done(path)
        if clock is not None:
            clock.now += step
    return taken


def changes(models: list[str | None]) -> int:
    """How often the model changes along ``models`` (clip-mode images do not count)."""
    used = [m for m in models if m is not None]
    return sum(a != b for a, b in itertools.pairwise(used))


def alternating(count: int, *folders: str) -> list[Path]:
    return [Path("/inbox") / folders[i % len(folders)] / f"{i:03}.png" for i in range(count)]


# --- the queue's lanes ---------------------------------------------------------------------


def test_alternating_speed_and_quality_arrivals_switch_once() -> None:
    """100 images dropped alternately into a speed and a quality folder go out model by model:
    one switch (two models), where arrival order would switch 99 times."""
    clock = FakeClock()
    q = lane_queue(30.0, clock)
    arrivals = alternating(100, "speed", "quality")
    for path in arrivals:
        assert q.put(path)
    taken = drain(q, batch=8, clock=clock, step=0.5)
    assert sorted(taken) == sorted(arrivals)
    assert changes([model_of(p) for p in taken]) == 1
    assert q.model_switches == 1
    assert changes([model_of(p) for p in arrivals]) == 99


def test_three_models_and_clip_images_switch_at_most_models_minus_one() -> None:
    """Clip-mode images ride along in any batch and never cost a switch."""
    clock = FakeClock()
    q = lane_queue(30.0, clock)
    arrivals = alternating(90, "speed", "clip", "quality", "vision")
    for path in arrivals:
        q.put(path)
    taken = drain(q, batch=8)
    assert sorted(taken) == sorted(arrivals)
    assert changes([model_of(p) for p in taken]) <= 2


def test_old_image_of_another_model_is_taken_after_switch_after_s() -> None:
    """A steady stream for one model does not starve an image for another: it goes out at
    the first batch after it waited switch_after_s, not before."""
    clock = FakeClock()
    q = lane_queue(30.0, clock)
    stream = iter(Path("/inbox/speed") / f"{i:04}.png" for i in range(10_000))
    for _ in range(4):
        q.put(next(stream))
    got = q.get_batch(2, timeout=0)
    assert got is not None and [model_of(p) for p in got] == ["speed", "speed"]
    late = Path("/inbox/quality/late.png")
    q.put(late)
    put_at = clock.now
    taken_at = None
    while taken_at is None:
        clock.now += 5.0
        q.put(next(stream))
        for path in q.get_batch(2, timeout=0) or []:
            if path == late:
                taken_at = clock.now
    assert 30.0 < taken_at - put_at <= 35.0
    assert q.model_switches == 1


def test_two_long_backlogs_alternate_once_per_bound_not_per_batch() -> None:
    """With both lanes full of old images, the wait counts from when a lane was last served:
    switches come once per switch_after_s, never on every batch."""
    clock = FakeClock()
    q = lane_queue(30.0, clock)
    for path in alternating(400, "speed", "quality"):
        q.put(path)
    clock.now += 1000.0  # everything has waited far past the bound
    taken = drain(q, batch=4, clock=clock, step=1.0)  # 100 batches over 100 s
    switches = changes([model_of(p) for p in taken])
    assert 1 <= switches <= 100 // 30 + 2
    assert len(taken) == 400


def test_switch_after_s_zero_is_plain_arrival_order() -> None:
    """0 seconds: the paths go out exactly in the order they arrived."""
    clock = FakeClock()
    q = lane_queue(0.0, clock)
    arrivals = alternating(40, "speed", "quality", "clip")
    for path in arrivals:
        q.put(path)
    assert drain(q, batch=8) == arrivals


def test_without_a_classifier_the_order_is_arrival_order() -> None:
    """The queue's old behaviour when nothing names the models."""
    q = JobQueue(100, switch_after_s=lambda: 30.0)
    arrivals = alternating(20, "speed", "quality")
    for path in arrivals:
        q.put(path)
    assert drain(q, batch=3) == arrivals


def test_retry_goes_back_to_its_lane_after_its_delay() -> None:
    """A failed image waits its retry delay, then is handed out with its own model's lane."""
    clock = FakeClock()
    q = lane_queue(1000.0, clock, schedule=RetrySchedule((5.0,)))
    failing = Path("/inbox/quality/q.png")
    q.put(failing)
    assert q.get_batch(8, timeout=0) == [failing]
    assert q.retry(failing, 1) is True
    for path in alternating(6, "speed"):
        q.put(path)
    assert q.delayed() == 1
    first = q.get_batch(2, timeout=0)
    assert first is not None and {model_of(p) for p in first} == {"speed"}
    clock.now += 6.0
    rest: list[Path] = []
    while (got := q.get_batch(2, timeout=0)) and failing not in rest:
        rest.extend(got)
    assert rest[-1] == failing and len(rest) == 5  # after speed's lane empties: "none left"
    assert q.retry(failing, 2) is False  # the schedule is used up: still in flight
    assert q.in_flight() == 7
    for path in first + rest:
        q.done(path)
    assert q.in_flight() == 0 and len(q) == 0 and q.delayed() == 0


def test_lanes_keep_dedupe_dirty_overflow_and_stop() -> None:
    """The queue's guarantees hold across lanes: one copy per path, a hint in flight runs it
    once more in its lane, the size bound counts every lane, stop refuses everything."""
    clock = FakeClock()
    overflowed: list[bool] = []
    q = lane_queue(30.0, clock, maxsize=3, on_overflow=lambda: overflowed.append(True))
    a, b, c, d = alternating(4, "speed", "quality")
    assert (q.put(a), q.put(a), q.put(b), q.put(c)) == (True, False, True, True)
    assert q.put(d) is False and overflowed == [True] and q.take_overflow()
    assert q.get_batch(1, timeout=0) == [a]
    assert q.put(a) is False  # in flight: dirty
    q.done(a)
    assert len(q) == 3
    taken = drain(q, batch=8)
    assert sorted(taken) == sorted([a, b, c])
    q.stop()
    assert q.put(d) is False
    assert q.get_batch(8, timeout=0) is None


def test_a_classifier_that_raises_still_queues_the_path() -> None:
    """Ordering is a hint: a broken classifier never loses an image."""

    def broken(path: Path) -> str | None:
        raise RuntimeError("boom")

    q = JobQueue(10, classify=broken, switch_after_s=lambda: 30.0)
    path = Path("/inbox/speed/a.png")
    assert q.put(path) is True
    assert q.get_batch(4, timeout=0) == [path]


def test_each_switch_is_logged_with_its_reason() -> None:
    """`model_switch` names the model, the previous one and why: none left or waited too long."""
    clock = FakeClock()
    q = lane_queue(30.0, clock)
    speed = alternating(4, "speed")
    q.put(speed[0])
    q.put(speed[1])
    with structlog.testing.capture_logs() as logs:
        q.get_batch(2, timeout=0)
        q.put(Path("/inbox/quality/q1.png"))
        clock.now += 31.0
        q.put(speed[2])
        q.put(speed[3])
        q.get_batch(2, timeout=0)  # quality waited too long
        q.get_batch(2, timeout=0)  # quality is empty: none left, back to speed
    switches = [(e["to"], e["previous"], e["reason"]) for e in logs if e["event"] == "model_switch"]
    assert switches == [
        ("speed", None, "none left"),
        ("quality", "speed", "waited too long"),
        ("speed", "quality", "none left"),
    ]


# --- which model an image uses; `process`'s order --------------------------------------


def make_ctx(tmp_path: Path, text: str = "") -> Context:
    (tmp_path / "inbox").mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text("inbox: inbox\n" + text, encoding="utf-8")
    config = load_config(tmp_path / "config.yaml", {"HOME": str(tmp_path)})
    return Context(config, RuleResolver(config), None, Composer(config.ollama, None))


def folder(ctx: Context, name: str, mode: str | None) -> Path:
    path = ctx.config.inbox[0].resolve() / name
    path.mkdir(parents=True)
    if mode is not None:
        (path / ".promptd.yaml").write_text(f"mode: {mode}\n", encoding="utf-8")
    return path


def test_model_for_follows_the_folder_rule_and_the_configured_models(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "ollama:\n  models:\n    quality: qwen2.5:7b\n")
    models = ctx.config.ollama.models
    assert model_for(folder(ctx, "plain", None) / "a.png", ctx) == models.speed
    assert model_for(folder(ctx, "deep", "quality") / "a.png", ctx) == "qwen2.5:7b"
    assert model_for(folder(ctx, "seen", "vision") / "a.png", ctx) == models.vision
    assert model_for(folder(ctx, "fast", "clip") / "a.png", ctx) is None
    broken = folder(ctx, "broken", None)
    (broken / ".promptd.yaml").write_text("mode: [unclosed\n", encoding="utf-8")
    assert model_for(broken / "a.png", ctx) is None  # held, no LLM
    assert model_for(tmp_path / "outside.png", ctx) is None


def test_by_model_groups_paths_in_order_of_first_appearance(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    speed, quality = folder(ctx, "s", None), folder(ctx, "q", "quality")
    paths = [d / f"{i}.png" for i in range(3) for d in (quality, speed)]
    ordered = by_model(paths, ctx)
    assert ordered == [quality / f"{i}.png" for i in range(3)] + [
        speed / f"{i}.png" for i in range(3)
    ]
    zero = make_ctx(tmp_path / "zero", "ollama:\n  switch_after_s: 0\n")
    assert by_model(paths, zero) == paths


@pytest.mark.parametrize(
    ("exclusive", "device", "ahead"),
    [(False, "cuda", True), (True, "cpu", True), (True, "cuda", False), (True, None, False)],
)
def test_clip_runs_ahead_only_when_it_cannot_take_the_gpu_from_the_llm(
    tmp_path: Path, exclusive: bool, device: str | None, ahead: bool
) -> None:
    ctx = make_ctx(tmp_path, f"gpu:\n  exclusive: {str(exclusive).lower()}\n")

    class Where:
        pass

    analyzer = Where()
    if device is not None:
        analyzer.device = device  # type: ignore[attr-defined]
    ctx = Context(ctx.config, ctx.rules, analyzer, ctx.composer)  # type: ignore[arg-type]
    assert clip_may_run_ahead(ctx) is ahead


def test_settings_bounds(tmp_path: Path) -> None:
    """switch_after_s is at least 0; parallel 1 to 8; defaults 30 s and 1."""
    ollama = Config().ollama
    assert (ollama.switch_after_s, ollama.parallel) == (30.0, 1)
    for bad in ("switch_after_s: -1", "parallel: 0", "parallel: 9"):
        with pytest.raises(ConfigError, match="config"):
            make_ctx(tmp_path / bad.replace(" ", "_").replace(":", ""), f"ollama:\n  {bad}\n")


def test_process_over_two_folders_calls_each_model_in_one_run(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama
) -> None:
    """`promptd process` given images of a speed and a quality folder alternately sends the
    LLM requests model by model (one switch); with switch_after_s 0, in the order given."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    inbox = tmp_path / "inbox"
    fast = write_images(inbox / "fast", 3)
    deep = write_images(inbox / "deep", 3)
    (inbox / "deep" / ".promptd.yaml").write_text("mode: quality\n", encoding="utf-8")
    given = [str(p) for pair in zip(deep, fast, strict=True) for p in pair]
    assert main(["process", *given, "--config", str(config), "--no-progress"]) == 0
    models = [b["model"] for b in fake_ollama.bodies() if b.get("messages")]
    assert len(models) == 6 and changes(list(models)) == 1

    zero = write_config(tmp_path, tiny_clip_dir, fake_ollama.url, ollama={"switch_after_s": 0})
    before = len(fake_ollama.bodies())
    args = ["process", *given, "--config", str(zero), "--no-progress", "--force"]
    assert main(args) == 0
    models = [b["model"] for b in fake_ollama.bodies()[before:] if b.get("messages")]
    assert len(models) == 6 and changes(list(models)) == 5


def test_doctor_explains_what_parallel_costs(tmp_path: Path) -> None:
    """parallel 1: an ok line saying what raising it needs; parallel 4: a warning naming
    the VRAM cost (a full context per slot) and OLLAMA_NUM_PARALLEL, below 4 here."""
    one = make_ctx(tmp_path / "one").config
    (line,) = check_parallel(one, {})
    assert line.level == "ok" and "OLLAMA_NUM_PARALLEL >= N" in line.detail
    four = make_ctx(tmp_path / "four", "ollama:\n  parallel: 4\n  num_ctx: 4096\n").config
    (line,) = check_parallel(four, {"OLLAMA_NUM_PARALLEL": "2"})
    assert line.level == "warn"
    assert "4 x num_ctx 4096" in line.detail and "full context" in line.detail
    assert "OLLAMA_NUM_PARALLEL is 2 here, below 4" in line.fix
    assert "OLLAMA_NUM_PARALLEL=4" in line.fix
    (line,) = check_parallel(four, {})
    assert "here" not in line.fix


def test_the_service_queue_orders_by_each_folders_model(tmp_path: Path) -> None:
    """`promptd run`'s queue is wired to the folder rules: alternate drops go out grouped."""
    from daemon.service.daemon import Service

    ctx = make_ctx(tmp_path, f"state_dir: {tmp_path / 'state'}\n")
    fast, deep = folder(ctx, "fast", None), folder(ctx, "deep", "quality")
    service = Service(ctx.config, None, {})
    given = [d / f"{i}.png" for i in range(4) for d in (deep, fast)]
    for path in given:
        assert service.queue.put(path)
    taken = drain(service.queue, batch=2)
    assert sorted(taken) == sorted(given)
    assert [p.parent for p in taken] == [deep] * 4 + [fast] * 4
