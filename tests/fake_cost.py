"""An optional cost model for the fake Ollama: model loads, a prompt cache per slot, decode time.

It models the hardware; it does not measure it. What it charges follows the reference
(shared/reference/llm-throughput-and-datasets.md §1-3):

- **One resident model.** A request for another model waits until no request is in flight,
  then pays a load (``Hardware.load_s``, reported as that request's ``load_duration``), and
  every slot's prompt cache is lost. Requests are admitted in arrival order, as Ollama's
  scheduler takes its pending queue: one waiting for a switch holds up those behind it.
- **N slots** (``OLLAMA_NUM_PARALLEL``): up to N requests for the resident model run at once;
  more wait. Each slot remembers the tokens of its last prompt; a request takes the free slot
  with the longest common prefix (ties: the one used longest ago), reuses that prefix and
  prefills the rest, always at least one token, as the Go runner does.
- **Prefill and decode** cost ``tokens / rate``. With k slots busy at a request's start, each
  runs at ``rate * (1 + parallel_gain * (k - 1)) / k``: more total throughput, slower requests.

Tokens are approximated, and the counts are exact for the approximation: the chat is rendered
as a template, per message a role token, for a user message its images first (``image_tokens``
tokens each, named by a hash of the image's bytes, so only the same image matches), then the
text as ``\\w+`` runs and single punctuation characters, then an end token; an assistant
token closes the prompt. Output tokens are the answer's pieces by the same rule (at least 1).

The model really sleeps each charge times ``speed`` (0.01: a 5 s load takes 50 ms), so wall
time is meaningful, while the durations it reports are the model's own, unscaled seconds (in
nanoseconds in the answers). ``charges`` records every request; ``loads`` counts the loads.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

_PIECE = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Hardware:
    """A machine's figures for one small model (llama3.2 3B class, Q4)."""

    name: str
    load_s: float  # a switch: eviction, VRAM recovery wait, runner start, weights from page cache
    prefill_tok_s: float
    decode_tok_s: float
    image_tokens: int = 260  # gemma3: 256 per image plus 4 wrapper tokens
    parallel_gain: float = 0.3  # extra total throughput per extra busy slot


# From the reference's §3: llama3.2 3B writes 35-50 tok/s on 4 GB cards (A400 35.5, RX 6500 XT
# 39.8, GTX 1650 Ti ~37-50), pp is 10-35x tg on GPUs (RX 580: 347 on a weak host), a load is a
# few seconds (3.77 s runner start from the page cache, 6.34 s cold) plus 0.5-1.5 s of VRAM wait
# on a swap. CPUs: 5-9 tok/s tg, pp about 2x tg (i5 2 threads: 7.7 / 17.7), no VRAM wait.
GPU_4GB = Hardware("4 GB GPU", load_s=5.0, prefill_tok_s=400.0, decode_tok_s=40.0)
CPU = Hardware("CPU", load_s=3.0, prefill_tok_s=18.0, decode_tok_s=8.0, parallel_gain=0.1)
PRESETS: dict[str, Hardware] = {"gpu-4gb": GPU_4GB, "cpu": CPU}


def text_tokens(text: str) -> list[str]:
    """The approximate tokens of ``text``: ``\\w+`` runs and single punctuation characters."""
    return _PIECE.findall(text)


def output_tokens(text: str) -> int:
    """How many tokens an answer cost to decode (at least one: the end of the answer)."""
    return max(1, len(text_tokens(text)))


def prompt_tokens(
    messages: Sequence[Any], images: Mapping[int, Sequence[bytes]], image_tokens: int
) -> list[str]:
    """The rendered chat's tokens; ``images[i]`` are message i's images (raw bytes)."""
    tokens: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            continue
        role = str(message.get("role") or "user")
        tokens.append(f"<|{role}|>")
        for data in images.get(index, ()):
            digest = hashlib.sha256(data).hexdigest()[:16]
            tokens.extend(f"<img:{digest}:{i}>" for i in range(image_tokens))
        tokens.extend(text_tokens(str(message.get("content") or "")))
        tokens.append("<|end|>")
    tokens.append("<|assistant|>")
    return tokens


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Charge:
    """What one request cost: model seconds (unscaled) and exact token counts."""

    model: str
    slot: int
    prompt_tokens: int
    cached_tokens: int  # served from the slot's cache
    decoded: int
    load_s: float  # 0.0 unless this request paid a load
    prefill_s: float
    decode_s: float
    queued_s: float  # model seconds spent waiting for a slot or a switch
    same_model_prefix: int  # tokens shared with the previous request for the same model
    started: float  # time.monotonic() when it was admitted
    ended: float
    tokens: tuple[str, ...] = field(default=(), repr=False, compare=False)  # the prompt's

    @property
    def prefilled(self) -> int:
        """Tokens this request prefilled (its prompt less the cached prefix)."""
        return self.prompt_tokens - self.cached_tokens

    def fields(self) -> dict[str, int]:
        """Ollama's timing fields for the final chunk, in integer nanoseconds."""
        ns = 1_000_000_000
        load = self.load_s if self.load_s > 0 else 0.004  # a few ms when already resident
        total = self.queued_s + load + self.prefill_s + self.decode_s
        return {
            "total_duration": round(total * ns),
            "load_duration": round(load * ns),
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": max(1, round(self.prefill_s * ns)),
            "eval_count": self.decoded,
            "eval_duration": max(1, round(self.decode_s * ns)),
        }


class CostModel:
    """One simulated Ollama runner: resident model, slots with prompt caches, FIFO admission."""

    def __init__(self, hardware: Hardware = GPU_4GB, *, slots: int = 1, speed: float = 1.0):
        if slots < 1 or speed < 0:
            raise ValueError("slots must be >= 1 and speed >= 0")
        self.hardware, self.slots, self.speed = hardware, slots, speed
        self.resident: str | None = None
        self.loads = 0
        self.charges: list[Charge] = []
        self._cache: list[list[str]] = [[] for _ in range(slots)]
        self._used = [0.0] * slots  # when each slot last started a request
        self._busy = [False] * slots
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()
        self._last: dict[str, list[str]] = {}  # model -> its previous prompt

    def _sleep(self, model_s: float) -> None:
        if model_s > 0 and self.speed > 0:
            time.sleep(model_s * self.speed)

    def _wait(self, model_s: float) -> None:
        """Sleep ``model_s`` (scaled) with the lock released; call with the lock held."""
        deadline = time.monotonic() + model_s * self.speed
        while (left := deadline - time.monotonic()) > 0:
            self._cond.wait(left)

    def _admit(self, model: str) -> tuple[int, float, float]:
        """Wait for this request's turn and a slot (loading ``model`` if it is not resident);
        returns (slot, load seconds, wait start)."""
        ticket, arrived = object(), time.monotonic()
        with self._cond:
            self._queue.append(ticket)
            while True:
                head = self._queue[0] is ticket
                busy = sum(self._busy)
                free = [i for i in range(self.slots) if not self._busy[i]]
                if head and free and (self.resident == model or busy == 0):
                    break
                self._cond.wait()
            load_s = 0.0
            if self.resident != model:
                load_s = self.hardware.load_s
                self.loads += 1
                self.resident = None
                self._cache = [[] for _ in range(self.slots)]
                self._wait(load_s)  # at the head of the queue: nobody passes a load
                self.resident = model
            self._queue.popleft()
            slot = min(free, key=lambda i: self._used[i])
            self._busy[slot] = True
            self._cond.notify_all()
        return slot, load_s, arrived

    def load(self, model: str) -> float:
        """An empty request (a preload): make ``model`` resident; the load seconds it paid."""
        slot, load_s, _ = self._admit(model)
        with self._cond:
            self._busy[slot] = False
            self._cond.notify_all()
        return load_s

    def run(self, model: str, tokens: list[str], decoded: int) -> Charge:
        """Serve one request of ``tokens`` answering ``decoded`` tokens; sleeps its time."""
        steps = self.stream(model, tokens, decoded, 0)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                charge: Charge = done.value
                return charge

    def stream(
        self, model: str, tokens: list[str], decoded: int, pieces: int
    ) -> Generator[None, None, Charge]:
        """``run`` as the real server streams: the load and prefill are slept, then the decode
        time is spread over ``pieces`` yields (send one answer piece after each), and the
        charge is the generator's return value. The slot stays busy until it returns."""
        slot, load_s, arrived = self._admit(model)
        admitted = time.monotonic()
        hw = self.hardware
        with self._cond:
            # the free slot with the longest common prefix (the one _admit chose if none helps)
            free = [i for i in range(self.slots) if not self._busy[i]] + [slot]
            best = max(free, key=lambda i: (common_prefix(self._cache[i], tokens), -self._used[i]))
            if best != slot:
                self._busy[slot], self._busy[best], slot = False, True, best
            cached = max(0, min(common_prefix(self._cache[slot], tokens), len(tokens) - 1))
            self._cache[slot] = list(tokens)
            self._used[slot] = admitted
            busy = sum(self._busy)
            previous = self._last.get(model)
            same = common_prefix(previous, tokens) if previous is not None else 0
            self._last[model] = list(tokens)
        share = (1 + hw.parallel_gain * (busy - 1)) / busy
        prefill_s = (len(tokens) - cached) / (hw.prefill_tok_s * share)
        decode_s = decoded / (hw.decode_tok_s * share)
        try:
            self._sleep(prefill_s if pieces else prefill_s + decode_s)
            begun = time.monotonic()  # pieces on a fixed schedule: sending them adds no time
            for index in range(pieces):
                due = begun + decode_s * self.speed * (index + 1) / pieces
                if (left := due - time.monotonic()) > 0:
                    time.sleep(left)
                yield
        except GeneratorExit:  # the client went away mid-answer: free the slot, charge nothing
            with self._cond:
                self._busy[slot] = False
                self._cond.notify_all()
            raise
        ended = time.monotonic()
        waited = admitted - arrived - load_s * self.speed
        queued_s = max(0.0, waited) / self.speed if self.speed > 0 else 0.0
        charge = Charge(
            model, slot, len(tokens), cached, decoded, load_s, prefill_s, decode_s,
            queued_s, same, admitted, ended, tuple(tokens),
        )  # fmt: skip
        with self._cond:
            self._busy[slot] = False
            self.charges.append(charge)
            self._cond.notify_all()
        return charge

    # what benches and tests read

    def totals(self) -> dict[str, float]:
        """Loads, prefilled and decoded tokens so far, and the model seconds they cost."""
        with self._cond:
            charges = list(self.charges)
            loads = self.loads
        prefilled = sum(c.prefilled for c in charges)
        decoded = sum(c.decoded for c in charges)
        return {
            "requests": len(charges),
            "loads": loads,
            "prefilled": prefilled,
            "decoded": decoded,
            "model_s": self.seconds(loads, prefilled, decoded),
        }

    def seconds(self, loads: int, prefilled: int, decoded: int) -> float:
        """Model seconds for that much work on one slot."""
        hw = self.hardware
        return loads * hw.load_s + prefilled / hw.prefill_tok_s + decoded / hw.decode_tok_s


def limit(
    requests: Iterable[tuple[str, Sequence[str], int]],
    hardware: Hardware,
    *,
    reuse: Literal["previous", "any"] = "previous",
) -> dict[str, float]:
    """The unavoidable work of ``requests`` (model, prompt tokens, decoded tokens, in order):
    one load per distinct model, each prompt less the prefix it shares with the previous
    prompt for the same model (a one-slot cache that is never lost; ``reuse="any"``: with any
    earlier prompt for that model, what a cache holding them all could reuse), at least one
    token each, and every decoded token; with its model seconds."""
    seen: dict[str, list[tuple[str, ...]]] = {}
    last: dict[str, tuple[str, ...]] = {}
    prefilled = decoded = 0
    for model, tokens, out in requests:
        earlier = seen.setdefault(model, [])
        key = tuple(tokens)
        if reuse == "previous":
            best = common_prefix(last[model], key) if model in last else 0
        else:  # the longest common prefix with a set of sequences is with a sorted neighbour
            at = bisect.bisect_left(earlier, key)
            near = [earlier[i] for i in (at - 1, at) if 0 <= i < len(earlier)]
            best = max((common_prefix(other, key) for other in near), default=0)
            earlier.insert(at, key)
        last[model] = key
        prefilled += max(1, len(key) - best)
        decoded += out
    loads = len(last)
    seconds = (
        loads * hardware.load_s
        + prefilled / hardware.prefill_tok_s
        + decoded / hardware.decode_tok_s
    )
    return {"loads": loads, "prefilled": prefilled, "decoded": decoded, "model_s": seconds}
