"""The decode-loop collector: runs the engine in its own thread and drains its recorder.

Two threads: the engine thread calls `engine.generate` round after round (with `loop`, forever, on
fresh prompts), and the drain thread moves finished steps out of the recorder every 0.25 s. Only the
drain thread counts as collector cost; the engine thread is the workload being profiled. The live TUI
runs this collector inside the engine worker process (engine_worker.py); `--in-process` runs it here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from llmtop.collectors.base import Collector
from llmtop.errors import LlmtopError
from llmtop.events import Marker, SourceInfo
from llmtop.kernels.base import KernelRecorder, SamplingParams


class EngineOps(Protocol):
    recorder: KernelRecorder

    def synchronize(self) -> None: ...


class DecodeEngine(Protocol):
    """What the collector drives: `llmtop.model.engine.Engine` (or the synthetic stand-in)."""

    ops: EngineOps
    max_batch: int

    def generate(self, prompts: list[str], max_new_tokens: int, sampling: SamplingParams = ...,
                 chat: bool = ..., stop_event: threading.Event | None = ...) -> list[Any]: ...

    def source_info(self) -> SourceInfo: ...

# Varied on purpose: short and long answers, code, lists, reasoning, so context lengths and step
# counts differ from round to round.
BUILTIN_PROMPTS: tuple[str, ...] = (
    "Explain in a few sentences why the sky is blue.",
    "Write a short Python function that checks whether a number is prime.",
    "List five countries in South America and their capitals.",
    "What is the difference between a list and a tuple in Python?",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "Give me a recipe for a simple tomato pasta sauce.",
    "What causes the seasons on Earth?",
    "Translate 'Good morning, how are you?' into French and Spanish.",
    "Write a haiku about a rainy afternoon in the city.",
    "How does a hash table work? Keep it brief.",
    "If a train travels 120 km in 1.5 hours, what is its average speed? Show the steps.",
    "Describe three tips for writing clear documentation.",
    "What is photosynthesis?",
    "Write a limerick about a cat who learned to program.",
    "Compare TCP and UDP in a short table.",
    "Tell me a fun fact about octopuses.",
)


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: one per line, or JSONL with a string or an object per line.

    JSON objects may use "prompt", "text", "content" or "messages" (last user message's content).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LlmtopError(f"prompt file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LlmtopError(f"cannot read prompt file {p}: {e}") from None
    prompts: list[str] = []
    jsonl = p.suffix.lower() in (".jsonl", ".ndjson")
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if jsonl or line[0] in "{\"":
            try:
                prompts.append(_prompt_from_json(json.loads(line)))
                continue
            except (ValueError, TypeError, KeyError) as e:
                if jsonl:
                    raise LlmtopError(f"{p}:{lineno}: not a JSON prompt ({e})") from None
        prompts.append(line)
    if not prompts:
        raise LlmtopError(f"prompt file has no prompts: {p}")
    return prompts


def _prompt_from_json(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        for key in ("prompt", "text", "content"):
            if isinstance(obj.get(key), str):
                return obj[key]
        msgs = obj.get("messages")
        if isinstance(msgs, list):
            users = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1], str):
                return users[-1]
    raise ValueError("expected a string or an object with prompt/text/content/messages")


def recorder_lost(recorder: Any) -> int:
    """Events a recorder dropped before they reached the queue: finished steps dropped unread from a full
    backlog, and kernel rows of CUDA steps whose event pool ran dry (those steps stay, untimed)."""
    kinds = ("backlog_dropped", "backlog_dropped_rows", "dropped_rows")
    return sum(int(getattr(recorder, a, 0)) for a in kinds)


# The default loop continues one conversation per batch row, so the context grows round by round (the
# attention pane needs contexts from tens to thousands of tokens to show growth): each round adds the
# next built-in question and keeps the model's answer. When the next round would pass this many tokens
# (or the engine's context), the conversation starts over.
CONVERSATION_MAX_CTX = 4096


class Conversation:
    """One batch row's growing chat: the turns so far, encoded through the engine's chat template."""

    def __init__(self, engine: Any, limit: int) -> None:
        self.engine = engine
        self.limit = limit
        self.turns: list[dict[str, str]] = []
        self.restarts = 0

    def next_prompt(self, question: str, max_new_tokens: int) -> list[int]:
        self.turns.append({"role": "user", "content": question})
        ids = self.engine.encode_chat(self.turns)
        if len(ids) + max_new_tokens > self.limit and len(self.turns) > 1:
            self.turns = [self.turns[-1]]  # start over: the context drops back to one question
            self.restarts += 1
            ids = self.engine.encode_chat(self.turns)
        return ids

    def answered(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})


class EngineCollector(Collector):
    """Runs `engine.generate` in a thread and feeds the recorder's batches into the queue.

    engine: a `DecodeEngine` (llmtop.model.engine.Engine).
    """

    name = "engine"

    def __init__(
        self,
        engine: DecodeEngine,
        *,
        prompts: list[str] | tuple[str, ...] | None = None,
        batch: int = 1,
        max_new_tokens: int = 64,
        sampling: SamplingParams | None = None,
        chat: bool = True,
        loop: bool = False,
        rounds: int | None = None,
        # 4 Hz: each wake-up takes the GIL from the decode loop between its ops; at 20 Hz the pipeline
        # cost 13 % of decode tok/s, at 4 Hz about 4 % (benchmarks/bench_tui_decode.py)
        drain_interval: float = 0.25,
        on_round: Callable[[int, list[Any]], None] | None = None,
        conversation: bool | None = None,
    ) -> None:
        super().__init__()
        if batch < 1:
            raise LlmtopError(f"batch size must be >= 1, got {batch}")
        if max_new_tokens < 0:  # 0: prefill only (--once --max-new-tokens 0 profiles prompt processing)
            raise LlmtopError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.engine = engine
        self.prompts = list(prompts) if prompts else list(BUILTIN_PROMPTS)
        self.batch = batch
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling or SamplingParams()
        self.chat = chat
        self.loop = loop
        # Without --loop one round covers the prompts once (in batches); with it, run until stopped.
        self.rounds = rounds if rounds is not None else (None if loop else -(-len(self.prompts) // batch))
        self.drain_interval = drain_interval
        self.on_round = on_round  # (round index, its Generations), on the engine thread after each round
        # None: on for the default run (loop, built-in prompts) with an engine that has a chat encoder
        if conversation is None:
            conversation = loop and not prompts and hasattr(engine, "encode_chat")
        limit = min(CONVERSATION_MAX_CTX, int(getattr(engine, "max_context", CONVERSATION_MAX_CTX)))
        self.conversations = [Conversation(engine, limit) for _ in range(batch)] if conversation else []
        self.rounds_done = 0
        self.current_prompt = ""
        self.last_outputs: list[Any] = []
        self._engine_done = threading.Event()
        self._engine_error: str | None = None
        self.engine_exception: Exception | None = None  # what ended the engine thread (--once re-raises it)

    def run(self) -> None:
        # The drain loop is this collector's measured thread; the engine gets its own, unmeasured one.
        self._spawn(self._engine_loop, "engine-loop", measured=False)
        recorder = self.engine.ops.recorder
        t0 = time.thread_time()
        lost_seen = 0
        while True:
            finished = self._engine_done.is_set()  # read before draining so the last steps are caught
            batch = recorder.drain()
            if batch is not None:
                self.emit(batch)
            lost = recorder_lost(recorder)
            if lost > lost_seen:  # events the recorder itself dropped count like queue drops
                self.dropped_events += lost - lost_seen
                lost_seen = lost
            self.flush_pending()
            self.account_cpu(t0)
            if finished:
                break
            self._engine_done.wait(self.drain_interval)
        if self._engine_error is not None:
            self.fail(self._engine_error)

    def _engine_loop(self) -> None:
        try:
            i = 0
            while not self.stopping and (self.rounds is None or i < self.rounds):
                n = len(self.prompts)
                chosen = [self.prompts[(i * self.batch + j) % n] for j in range(self.batch)]
                self.current_prompt = chosen[0]
                inputs: list[Any] = list(chosen)
                label = chosen[0][:60]
                if self.conversations:
                    pairs = zip(self.conversations, chosen, strict=True)
                    inputs = [c.next_prompt(q, self.max_new_tokens) for c, q in pairs]
                    turn = len(self.conversations[0].turns) // 2 + 1
                    label += f" (conversation turn {turn}, {len(inputs[0])} tokens of context)"
                self.emit(Marker(time.perf_counter_ns(), f"round {i}: {label}"))
                self.last_outputs = self.engine.generate(
                    inputs, self.max_new_tokens, sampling=self.sampling, chat=self.chat,
                    stop_event=self._stop,
                )
                for c, g in zip(self.conversations, self.last_outputs, strict=False):
                    c.answered(g.text)
                if self.on_round is not None:
                    self.on_round(i, self.last_outputs)
                i += 1
                self.rounds_done = i
            # Timings resolve asynchronously on some devices (CUDA events, GPU timestamps): wait for the
            # device here, on the thread that owns it, so the drain thread's last pass finds every step.
            self.engine.ops.synchronize()
        except Exception as e:
            self.engine_exception = e
            self._engine_error = f"{type(e).__name__}: {e}".replace("\n", " ")
        finally:
            self._engine_done.set()

    def activity(self) -> str:
        return f"#{self.rounds_done + 1} {self.current_prompt}" if self.current_prompt else ""
