"""The engine worker: the decode loop in its own process, streaming its events to the live TUI.

`python -m llmtop.collectors.engine_worker` reads one JSON `EngineSpec` line on stdin, builds the engine
and runs an `EngineCollector` whose "queue" writes each item as a frame (llmtop.codec, the agent's wire
format) on the original stdout. The parent (`EngineProcessCollector`) reads those frames into the pipeline.

Why a process: in one process every UI frame and every collector wake-up takes the GIL from the decode
loop between its ops, which cost 11 % of decode tok/s with the TUI running. Here the only extra thread
next to the engine is the drain, four times a second (the py-spy split of sampler and display).

Lifetime: stdin stays open; when it closes (the parent stopped us, or died, even by SIGKILL) the loop
stops after the current step, the last events are drained and an END frame is written. SIGINT is
ignored: a ctrl-c in the terminal reaches the whole process group, and the parent decides.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from llmtop import codec
from llmtop.collectors.engine import EngineCollector
from llmtop.errors import LlmtopError
from llmtop.events import EventBatch, Marker


@dataclass(slots=True)
class EngineSpec:
    """Everything needed to build and drive the engine, as JSON for the worker's stdin."""

    model: str = "default"
    backend: str = "auto"
    dtype: str = "auto"  # bfloat16 on CUDA, float32 elsewhere (kernels/factory.py)
    threads: int | None = None
    adapter: str | None = None  # --backend wgpu: substring of the adapter's "device (backend)"
    timing: bool = True
    seed: int | None = None
    batch: int = 1
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    chat: bool = True
    loop: bool = False
    ignore_eos: bool = False  # keep generating past EOS: fixed-length rounds for benchmarks
    gpu_sample_s: float = 2.0  # CUDA: profile one step every this many seconds under CUPTI (0: never)
    peak: str | None = None  # --peak BW,FLOPS: the roofs instead of the probe's or the table's
    warmup: int = 0  # --warmup N: untimed rounds before the first timed one (TTFT then says "warm")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> EngineSpec:
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise LlmtopError(f"engine spec is not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise LlmtopError("engine spec is not a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise LlmtopError(f"engine spec has unknown keys: {', '.join(unknown)}")
        return cls(**obj)

    def sampling(self) -> Any:
        from llmtop.kernels.base import SamplingParams

        return SamplingParams(self.temperature, self.top_k, self.top_p, self.seed)


def build_engine(spec: EngineSpec, note: Callable[[str], None] | None = None,
                 stage: Callable[[str], None] | None = None) -> Any:
    """Ops + model + Engine for a spec (the backend is checked before the slow model load). `stage(text)`
    is told as each slow part begins (the loading screen shows them with their times)."""
    from llmtop.kernels.factory import make_ops
    from llmtop.model.engine import Engine
    from llmtop.model.loader import load_model

    say = stage or (lambda text: None)
    say(f"starting the {spec.backend} backend"
        + (" (cuda if torch sees a GPU, else cpu)" if spec.backend == "auto" else ""))
    ops = make_ops(spec.backend, spec.dtype, threads=spec.threads, timing=spec.timing, adapter=spec.adapter,
                   gpu_sample_s=spec.gpu_sample_s)
    try:
        say(f"reading the {spec.model} model and dequantizing its weights")
        loaded = load_model(spec.model, seed=spec.seed or 0)
        if loaded.random_weights and note is not None:
            note(f"{loaded.source} has random weights; the generated text is meaningless")
        if spec.peak:
            from llmtop.kernels.peaks import parse_peak

            ops.set_peak(parse_peak(spec.peak, ops.dtype_name))
        say(f"placing {loaded.config.n_layers} layers on the {ops.backend} backend")
        engine = Engine(loaded, ops, max_batch=spec.batch)
    except BaseException:
        ops.close()
        raise
    loaded.weights = {}  # the backend holds its own copies (or zero-copy views); drop our refs
    if spec.ignore_eos:
        engine.eos_ids = frozenset()
    if spec.warmup > 0:
        say(f"warm-up: {spec.warmup} untimed round{'s' if spec.warmup > 1 else ''}")
        warm_up(engine, spec)
    return engine


WARMUP_TOKENS = 8  # a warm-up round's decode steps: enough to run every decode code path once


def warm_up(engine: Any, spec: EngineSpec) -> None:
    """--warmup N: N rounds of the spec's first prompt(s), whose events are dropped before anything is
    collected, so the first timed prefill no longer pays the process's one-time costs (allocations,
    kernels loaded on first call). The source then says `warmup_rounds`."""
    from llmtop.collectors.engine import BUILTIN_PROMPTS

    prompts = (spec.prompts or [BUILTIN_PROMPTS[0]])[: spec.batch]
    prompts = [prompts[i % len(prompts)] for i in range(spec.batch)]
    for _ in range(spec.warmup):
        engine.generate(prompts, min(spec.max_new_tokens, WARMUP_TOKENS), sampling=spec.sampling(),
                        chat=spec.chat)
    engine.ops.synchronize()
    engine.ops.recorder.discard()
    engine.warmup_rounds = spec.warmup


class FrameSink:
    """Stands in for the pipeline queue inside the worker: every item becomes a frame on `fd`.

    Writes block when the parent reads slowly (only the drain thread waits, never a kernel); the parent's
    bounded queue is where events are dropped and counted.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.collector: Any = None
        self.broken = False
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.broken:
                return
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:  # the parent is gone: nobody is left to show the events
                self.broken = True
                if self.collector is not None:
                    self.collector.stop()

    def json(self, ftype: int, obj: Any) -> None:
        self.write(codec.json_frame(ftype, obj))

    def put(self, item: Any) -> bool:
        c = self.collector
        if isinstance(item, EventBatch):
            self.write(codec.encode_batch(item))
            # the drain thread's own CPU, so the parent's header shows the whole collector cost
            # dropped: what the worker's recorder lost (this sink itself never drops: it blocks)
            self.json(codec.STATUS, {"t_ns": time.perf_counter_ns(), "cpu_s": c.cpu_s if c else 0.0,
                                    "dropped": c.dropped_events if c else 0})
        elif isinstance(item, Marker):
            self.json(codec.MARKER, {"t_ns": item.t_ns, "text": item.text,
                                    "round": c.rounds_done if c else 0,
                                    "prompt": c.current_prompt if c else ""})
        return True

    put_force = put

    def round_done(self, index: int, generations: list[Any]) -> None:
        self.json(codec.OUTPUT, {"round": index, "generations": [
            {"text": g.text, "token_ids": [int(t) for t in g.token_ids], "prompt_tokens": g.prompt_tokens,
             "finish_reason": g.finish_reason} for g in generations]})


def _watch_stdin(stop: Callable[[], None]) -> None:
    # os.read on the raw fd: a daemon thread blocked inside sys.stdin's buffered reader holds its lock,
    # and interpreter shutdown then aborts the process trying to take it.
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    stop()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Frames go to a private copy of stdout; fd 1 becomes stderr so a stray print can't corrupt them.
    sink = FrameSink(os.dup(1))
    os.dup2(2, 1)
    try:
        spec = EngineSpec.from_json(sys.stdin.buffer.readline())
        engine = build_engine(spec, note=lambda text: sink.json(codec.NOTE, {"text": text}),
                              stage=lambda text: sink.json(codec.NOTE, {"text": text, "stage": True}))
        collector = EngineCollector(
            engine, prompts=spec.prompts or None, batch=spec.batch, max_new_tokens=spec.max_new_tokens,
            sampling=spec.sampling(), chat=spec.chat, loop=spec.loop, on_round=sink.round_done,
        )
    except LlmtopError as e:
        sink.json(codec.END, {"error": str(e), "rounds": 0})
        return 2
    except Exception as e:  # anything else still reaches the parent as one line
        sink.json(codec.END, {"error": f"{type(e).__name__}: {e}".replace("\n", " "), "rounds": 0})
        return 1
    sink.collector = collector
    sink.json(codec.SOURCE, engine.source_info().to_dict())
    threading.Thread(target=_watch_stdin, args=(collector.stop,), name="llmtop-stdin", daemon=True).start()
    collector.start(sink)  # type: ignore[arg-type]  # a queue is anything with put/put_force
    collector.join()
    error = collector.error
    with contextlib.suppress(Exception):
        engine.ops.close()
    sink.json(codec.END, {"error": error, "rounds": collector.rounds_done})
    os.close(sink.fd)
    return 0 if error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
