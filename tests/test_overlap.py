"""The worker's overlap (CLIP of the next batch while the LLM works) and ollama.parallel."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon.config import load_config
from daemon.config.rules import RuleResolver
from daemon.pipeline import Context
from daemon.pipeline.compose.client import LLMReply
from daemon.pipeline.compose.modes import Composer
from daemon.records import Analysis, Analyzed
from daemon.service.gpulock import GpuLock
from daemon.service.live import Live
from daemon.service.llmphase import LlmPhase
from daemon.service.progress import Heartbeat
from daemon.service.queue import JobQueue
from daemon.service.tally import Tally
from daemon.service.worker import Worker
from tests.daemon_helpers import wait_until, write_images

Span = tuple[float, float]


class TimedAnalyzer:
    """A CLIP stand-in that says where it runs and records when each batch was analysed."""

    model_id = "fake-clip"

    def __init__(self, device: str) -> None:
        self.device = device
        self.spans: list[Span] = []

    def analyze(self, images: Sequence[Image.Image]) -> list[Analysis]:
        return [seen.analysis for seen in self.analyze_embedded(images)]

    def analyze_embedded(self, images: Sequence[Image.Image]) -> list[Analyzed]:
        started = time.monotonic()
        time.sleep(0.02)
        self.spans.append((started, time.monotonic()))
        return [Analyzed({}) for _ in images]

    def clip_prompt(self, caption: str, embedding: Any) -> str:
        raise AssertionError("not asked for")

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class SlowLLM:
    """An LLM whose every answer takes ``answer_s``; takes the GPU lock per request as the
    real client does, and records each request's span, the most in flight at once, and
    whether the lock was held (by anyone) while it ran."""

    def __init__(self, gpu: GpuLock, answer_s: float) -> None:
        self.gpu = gpu
        self.answer_s = answer_s
        self.spans: list[Span] = []
        self.locked: list[bool] = []
        self.peak = 0
        self._running = 0
        self._lock = threading.Lock()

    def chat_json(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        schema: Mapping[str, Any],
        *,
        num_predict: int,
        temperature: float,
        images: Sequence[bytes] | None = None,
    ) -> LLMReply:
        with self.gpu:
            started = time.monotonic()
            with self._lock:
                self._running += 1
                self.peak = max(self.peak, self._running)
            self.locked.append(self.gpu.held)
            time.sleep(self.answer_s)
            with self._lock:
                self._running -= 1
                self.spans.append((started, time.monotonic()))
        answer = {"prompt": "a red square on white", "negative_prompt": "blurry"}
        return LLMReply(
            text=json.dumps(answer), done_reason="stop", eval_count=12, total_duration_ms=1.0
        )

    def capabilities(self, model: str) -> frozenset[str]:
        return frozenset({"completion"})


class World:
    """A worker over a fake CLIP and a slow fake LLM, with images queued in one folder."""

    def __init__(
        self, tmp_path: Path, *, exclusive: bool, device: str, parallel: int = 1, batch: int = 2
    ) -> None:
        (tmp_path / "inbox").mkdir()
        (tmp_path / "config.yaml").write_text(
            "inbox: inbox\n"
            f"gpu:\n  exclusive: {str(exclusive).lower()}\n"
            f"clip:\n  batch_size: {batch}\n"
            f"ollama:\n  parallel: {parallel}\n  retries: 0\n",
            encoding="utf-8",
        )
        config = load_config(tmp_path / "config.yaml", {"HOME": str(tmp_path)})
        self.live = Live(config, GpuLock(config.gpu.exclusive))
        self.analyzer = TimedAnalyzer(device)
        self.llm = SlowLLM(self.live.gpu, answer_s=0.25)
        composer = Composer(config.ollama, self.llm, sleep=lambda _: None)
        self.live.ctx = Context(config, RuleResolver(config), self.analyzer, composer)
        self.queue = JobQueue(100)
        self.tally = Tally()
        self.images = write_images(config.inbox[0] / "drop", 0)
        self.inbox = config.inbox[0]

    def run(self, count: int) -> None:
        """Queue ``count`` images, let the worker do them all, stop it."""
        for image in write_images(self.inbox / "drop", count):
            assert self.queue.put(image)
        worker = Worker(self.live, self.queue, self.tally)
        self.heartbeat = worker.heartbeat
        worker.thread.start()
        try:
            wait_until(lambda: self.tally.outcomes["ok"] >= count, 60, "every image done")
        finally:
            self.live.stop.set()
            self.queue.stop()
            worker.thread.join(10)
        assert not worker.thread.is_alive()
        assert sum(self.tally.outcomes.values()) == count


def test_clip_of_the_next_batch_runs_while_the_llm_works_when_not_exclusive(
    tmp_path: Path,
) -> None:
    """gpu.exclusive off: batch 2's CLIP is done before batch 1's LLM requests finish."""
    world = World(tmp_path, exclusive=False, device="cuda")
    world.run(4)
    clip, llm = world.analyzer.spans, sorted(world.llm.spans)
    assert len(clip) == 2 and len(llm) == 4
    assert clip[1][1] < llm[1][1]  # the 2nd batch's CLIP ended before the 1st batch's LLM
    assert clip[1][0] < llm[0][1]  # and began while the first request was still running


def test_clip_on_the_cpu_runs_ahead_even_when_exclusive(tmp_path: Path) -> None:
    """CLIP on the CPU takes nothing from the GPU, so it runs ahead under gpu.exclusive too."""
    world = World(tmp_path, exclusive=True, device="cpu")
    world.run(4)
    clip, llm = world.analyzer.spans, sorted(world.llm.spans)
    assert clip[1][1] < llm[1][1]


def test_clip_on_the_gpu_waits_for_the_llm_when_exclusive(tmp_path: Path) -> None:
    """gpu.exclusive with CLIP on CUDA (simulated): batch 2's CLIP starts only after batch
    1's last LLM request ended: the two never share the card."""
    world = World(tmp_path, exclusive=True, device="cuda")
    world.run(4)
    clip, llm = world.analyzer.spans, sorted(world.llm.spans)
    assert len(clip) == 2
    assert clip[1][0] >= llm[1][1]
    assert world.live.gpu.acquisitions == 4  # one turn per request, as before


@pytest.mark.parametrize("exclusive", [True, False])
def test_parallel_keeps_n_requests_in_flight(tmp_path: Path, exclusive: bool) -> None:
    """ollama.parallel 3: three requests of a batch run at once; with gpu.exclusive the lock
    is taken once per batch (the LLM phase), held throughout, not once per request."""
    world = World(tmp_path, exclusive=exclusive, device="cuda", parallel=3, batch=2)
    started = time.monotonic()
    world.run(6)  # batches of max(clip.batch_size, parallel) = 3
    assert world.llm.peak == 3
    assert len(world.llm.spans) == 6
    assert time.monotonic() - started < 6 * 0.25  # serial requests would take longer
    if exclusive:
        assert world.live.gpu.acquisitions == 2
        assert all(world.llm.locked)
    else:
        assert world.live.gpu.acquisitions == 0
    assert world.heartbeat.in_hand() == []  # every helper thread's slot ended


def test_parallel_one_is_one_request_at_a_time(tmp_path: Path) -> None:
    world = World(tmp_path, exclusive=True, device="cuda", parallel=1, batch=3)
    world.run(3)
    assert world.llm.peak == 1
    assert world.live.gpu.acquisitions == 3


def test_llm_phase_returns_outcomes_in_order_and_clip_waits_for_the_whole_phase() -> None:
    """The phase's outcomes come back in the steps' order; a CLIP turn asked for during the
    phase (another thread) is given only after the last request of the phase ended."""
    gpu = GpuLock(True)
    phase = LlmPhase(gpu, Heartbeat(), parallel=2)
    ended: list[float] = []
    clip_turn: list[float] = []

    def clip_wants_the_gpu() -> None:
        with gpu:
            clip_turn.append(time.monotonic())

    def step(i: int) -> Any:
        def run() -> Any:
            with gpu:  # the client's per-request turn: covered by the phase
                if i == 0:
                    threading.Thread(target=clip_wants_the_gpu).start()
                time.sleep(0.05 * (4 - i))
                ended.append(time.monotonic())
            return i

        return run

    assert phase([step(i) for i in range(4)]) == [0, 1, 2, 3]
    wait_until(lambda: bool(clip_turn), 5, "CLIP's turn")
    assert clip_turn[0] >= max(ended)
    assert phase.peak == 2
    with pytest.raises(ValueError, match="at least 1"):
        LlmPhase(gpu, Heartbeat(), parallel=0)
