"""Collectors and the pipeline: queue drops, real and synthetic producers, dying collectors, replay."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from llmtop.collectors.base import DONE, ERROR, RUNNING, UNAVAILABLE, Collector
from llmtop.collectors.counters import CounterStore
from llmtop.collectors.engine import BUILTIN_PROMPTS, EngineCollector, load_prompts
from llmtop.collectors.gpu import GpuCollector
from llmtop.collectors.pipeline import AGGREGATOR, Pipeline
from llmtop.collectors.process import ProcessCollector
from llmtop.collectors.queue import BoundedQueue
from llmtop.collectors.replay import ReplaySource, load_into
from llmtop.collectors.synthetic import SyntheticEngine
from llmtop.errors import LlmtopError
from llmtop.events import CounterSample, EventBatch, Marker, NameTable
from llmtop.traces.recording import RecordingReader, RecordingWriter


class SinkAggregator:
    """Records what the pipeline hands an Aggregator (the real one is checked when it exists)."""

    def __init__(self) -> None:
        self.batches: list[EventBatch] = []
        self.dropped: dict[str, int] = {}
        self.cost: dict[str, float] = {}
        self.source: Any = None
        self.names = NameTable()

    def set_source(self, s: Any) -> None:
        self.source = s

    def ingest(self, b: EventBatch) -> None:
        self.names.extend(b.names_base, b.new_names)  # raises on a name-table gap
        self.batches.append(b)

    def note_dropped(self, c: str, n: int) -> None:
        self.dropped[c] = self.dropped.get(c, 0) + n

    def note_cost(self, c: str, s: float) -> None:
        self.cost[c] = self.cost.get(c, 0.0) + s

    def snapshot(self, **kw: Any) -> int:
        return sum(len(b) for b in self.batches)

    def reset(self) -> None:
        self.batches.clear()

    @property
    def kernels(self) -> int:
        return sum(len(b.kernels) for b in self.batches)

    @property
    def steps(self) -> int:
        return sum(len(b.steps) for b in self.batches)


def real_aggregator() -> Any | None:
    try:
        from llmtop.stats import Aggregator  # type: ignore[attr-defined]
    except ImportError:
        return None
    return Aggregator(window_s=10.0)


# -- BoundedQueue ---------------------------------------------------------------------------
def test_queue_drops_and_counts_without_blocking() -> None:
    q: BoundedQueue[CounterSample] = BoundedQueue(max_items=50)
    n_threads, per = 4, 1000
    accepted = [0] * n_threads

    def produce(i: int) -> None:
        for j in range(per):
            accepted[i] += q.put(CounterSample("p", j, {}))

    t0 = time.monotonic()
    threads = [threading.Thread(target=produce, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 < 5  # nobody consumed, yet no producer blocked
    assert len(q) == 50 == sum(accepted)
    assert q.dropped_items == q.dropped_events == n_threads * per - 50
    assert q.fill == 1.0
    assert len(q.get_many(timeout=0)) == 50 and q.events == 0


def test_queue_bounds_by_events() -> None:
    eng = SyntheticEngine(n_layers=1, step_time_s=0)
    eng.generate(["x"], 3)
    b = eng.ops.recorder.drain()
    assert b is not None and len(b) > 10
    q: BoundedQueue[EventBatch] = BoundedQueue(max_items=100, max_events=len(b) * 2)
    assert q.put(b) and q.put(b) and not q.put(b)
    assert q.dropped_events == len(b)
    big: BoundedQueue[EventBatch] = BoundedQueue(max_items=10, max_events=5)
    assert big.put(b)  # larger than the bound but the queue is empty: accepted, never stuck


def test_put_wait_blocks_until_room() -> None:
    q: BoundedQueue[Marker] = BoundedQueue(max_items=1)
    assert q.put(Marker(0, "a"))
    assert not q.put_wait(Marker(1, "b"), timeout=0.05)
    threading.Timer(0.1, lambda: q.get_many(timeout=0)).start()
    assert q.put_wait(Marker(2, "c"), timeout=5)
    assert q.dropped_items == 0


def test_dropped_batches_keep_the_name_table_consistent() -> None:
    q: BoundedQueue[Any] = BoundedQueue(max_items=1)
    c = Collector("t")
    c._queue = q
    eng = SyntheticEngine(n_layers=1, step_time_s=0)
    rec = eng.ops.recorder
    batches = []
    for name in ("x:a", "x:b", "x:c"):
        rec.kernel_id(name, "other")
        eng.generate(["p"], 1)
        batches.append(rec.drain())
    assert c.emit(batches[0]) and not c.emit(batches[1]) and not c.emit(batches[2])
    assert c.dropped_events == len(batches[1]) + len(batches[2])
    c.flush_pending()  # names of dropped batches still arrive, in order
    table = NameTable()
    for b in q.get_many(timeout=0):
        table.extend(b.names_base, b.new_names)
    assert table.names == rec.names.names


# -- collectors -----------------------------------------------------------------------------
def test_process_collector_sample() -> None:
    s = ProcessCollector().sample()
    assert s.source == "process" and s.values["rss_bytes"] > 10e6 and s.values["threads"] >= 1
    assert 0 <= s.values["sys_cpu_pct"] <= 100


def test_process_collector_tree_sums_a_command_and_its_children() -> None:
    """`llmtop run`: the model may run in a grandchild (vLLM's worker); the strip sums the whole tree."""
    import subprocess
    import sys

    code = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', " \
           "'x = bytearray(60_000_000); import time; time.sleep(30)']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        pc = ProcessCollector(pid=parent.pid, tree=True)
        alone = ProcessCollector(pid=parent.pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = pc.sample()
            if s.values["processes"] == 2 and s.values["rss_bytes"] > 60e6:
                break
            time.sleep(0.2)
        assert s.values["processes"] == 2
        assert s.values["rss_bytes"] > alone.sample().values["rss_bytes"] + 55e6  # the child's 60 MB
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait()


def test_gpu_collector_reports_gauges_or_why_not() -> None:
    g = GpuCollector()
    if g.available:
        (s, *_) = g.sample()
        assert {"util_pct", "mem_used_bytes", "mem_total_bytes"} <= set(s.values)
        assert 0 < s.values["mem_used_bytes"] <= s.values["mem_total_bytes"]
        g.close()
    else:
        assert g.state == UNAVAILABLE and g.reason and "\n" not in g.reason
        assert g.error == g.reason
        g.start(BoundedQueue())  # starting an unavailable collector is a no-op
        assert not g.alive


def test_load_prompts(tmp_path: Path) -> None:
    p = tmp_path / "p.txt"
    p.write_text("first prompt\n\n  second prompt  \n")
    assert load_prompts(p) == ["first prompt", "second prompt"]
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a"}\n"b"\n{"messages": [{"role": "user", "content": "c"}]}\n')
    assert load_prompts(j) == ["a", "b", "c"]
    j.write_text('{"prompt": "a"}\n{"nope": 1}\n')
    with pytest.raises(LlmtopError, match=r"p.jsonl:2"):
        load_prompts(j)
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(LlmtopError, match="no prompts"):
        load_prompts(tmp_path / "e.txt")
    with pytest.raises(LlmtopError, match="not found"):
        load_prompts(tmp_path / "missing.txt")
    assert len(set(BUILTIN_PROMPTS)) >= 10


class BrokenEngine(SyntheticEngine):
    def generate(self, prompts: list[str], max_new_tokens: int, **kw: Any) -> list[Any]:
        super().generate(prompts, 2, **kw)
        raise RuntimeError("device lost\nsecond line")


def test_dying_collector_reports_and_the_rest_keeps_running() -> None:
    agg = SinkAggregator()
    p = Pipeline(agg, report_interval=0.1)
    broken = p.add(EngineCollector(BrokenEngine(n_layers=2, step_time_s=0), loop=True))
    good = p.add(EngineCollector(SyntheticEngine(n_layers=2, step_time_s=0.005), loop=True,
                                 max_new_tokens=4))
    good.name = "engine2"
    proc = p.add(ProcessCollector(interval=0.1))
    p.start()
    try:
        deadline = time.monotonic() + 10
        while broken.state != ERROR and time.monotonic() < deadline:
            time.sleep(0.02)
        n0 = agg.steps
        time.sleep(0.4)
        st = p.status()
        assert broken.state == ERROR and broken.error == "RuntimeError: device lost second line"
        assert any(e.startswith("engine: RuntimeError: device lost") for e in st.errors)
        assert good.state == RUNNING and proc.state == RUNNING
        assert agg.steps > n0  # the healthy producer still feeds the aggregator
        assert p.counters.latest()["process"].values["rss_bytes"] > 0
    finally:
        p.stop()


def test_pipeline_overflow_counts_drops_and_records_the_rest(tmp_path: Path) -> None:
    """A stalled aggregator: producers never block, drops reach the Aggregator and the header."""
    gate = threading.Event()

    class Slow(SinkAggregator):
        def ingest(self, b: EventBatch) -> None:
            gate.wait(5)
            super().ingest(b)

    agg = Slow()
    eng = SyntheticEngine(n_layers=2, step_time_s=0.001)
    w = RecordingWriter(tmp_path / "o.llmtop", eng.source_info())
    p = Pipeline(agg, writer=w, queue=BoundedQueue(max_items=3), report_interval=0.1)
    c = p.add(EngineCollector(eng, loop=True, max_new_tokens=8, drain_interval=0.01))
    p.start()
    try:
        deadline = time.monotonic() + 10
        while c.dropped_events == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.dropped_events > 0
        gate.set()
        time.sleep(0.4)
        st = p.status()
        assert st.dropped_events == c.dropped_events > 0
    finally:
        p.stop()
    assert agg.dropped["engine"] == c.dropped_events  # increments add up to the total
    assert agg.cost["engine"] > 0 and agg.cost[AGGREGATOR] > 0
    # the recording holds exactly what the aggregator folded, names included
    with RecordingReader(tmp_path / "o.llmtop") as r:
        rec_batches = [b for _, b in r if isinstance(b, EventBatch)]
    assert sum(len(b) for b in rec_batches) == sum(len(b) for b in agg.batches)


def test_pipeline_synthetic_end_to_end(tmp_path: Path) -> None:
    agg = SinkAggregator()
    eng = SyntheticEngine(n_layers=3, step_time_s=0.002)
    p = Pipeline(agg, writer=RecordingWriter(tmp_path / "s.llmtop", eng.source_info()))
    p.set_source(eng.source_info())
    c = p.add(EngineCollector(eng, prompts=["a", "b", "c"], batch=2, max_new_tokens=5))
    p.start()
    assert p.wait_done(20)
    p.stop()
    assert c.state == DONE and c.rounds_done == 2  # 3 prompts in batches of 2
    assert agg.steps == 2 * 5 and agg.kernels == 10 * (4 + 15 * 3)
    assert agg.source.backend == "synthetic"
    assert [m.text[:7] for m in p.markers] == ["round 0", "round 1"]


@pytest.fixture(scope="module")
def real_engine() -> Any:
    from llmtop.kernels.torch_backend import TorchOps
    from llmtop.model.engine import Engine
    from llmtop.model.loader import load_model

    return Engine(load_model("default"), TorchOps(device="cpu", threads=1))


@pytest.mark.slow
def test_pipeline_real_generation(real_engine: Any, tmp_path: Path) -> None:
    agg = SinkAggregator()
    real = real_aggregator()
    rec = tmp_path / "real.llmtop"
    p = Pipeline(agg, writer=RecordingWriter(rec, real_engine.source_info()))
    p.set_source(real_engine.source_info())
    c = p.add(EngineCollector(real_engine, prompts=["Why is the sky blue?"], max_new_tokens=8))
    p.start()
    assert p.wait_done(120)
    p.stop()
    assert c.state == DONE, c.error
    n_layers = real_engine.source_info().n_layers
    gen = c.last_outputs[0]
    assert agg.steps == len(gen.token_ids) and agg.kernels == agg.steps * (4 + 15 * n_layers)
    assert set(agg.names.names) >= {"matmul:q_proj", "attention:decode", "sampling"}
    if real is not None:  # the real Aggregator's snapshot over the same recording
        summary = load_into(rec, real)
        assert summary.events == sum(len(b) for b in agg.batches)
        report = real.snapshot(mode="cumulative").report
        assert sum(k["count"] for k in report["kernels"]) == agg.kernels


# -- replay ---------------------------------------------------------------------------------
def make_recording(path: Path, steps: int = 20, step_s: float = 0.01) -> tuple[int, float]:
    """A recording whose batches span `steps * step_s` seconds; returns (events, span)."""
    eng = SyntheticEngine(n_layers=1, step_time_s=step_s)
    events = 0
    t0 = None
    with RecordingWriter(path, eng.source_info()) as w:
        for _ in range(steps):
            eng.generate(["x"], 1)
            b = eng.ops.recorder.drain()
            t0 = t0 or int(b.steps["start_ns"][0])
            w.write(b)
            w.write(CounterSample("process", int(b.steps["start_ns"][0]), {"cpu_pct": 1.0}))
            events += len(b)
    return events, (int(b.steps["start_ns"][-1] + b.steps["dur_ns"][-1]) - t0) / 1e9


def run_replay(src: ReplaySource, timeout: float = 20) -> tuple[SinkAggregator, float, Pipeline]:
    agg = SinkAggregator()
    p = Pipeline(agg)
    p.set_source(src.source)
    p.add(src)
    t = time.monotonic()
    p.start()
    assert p.wait_done(timeout)
    elapsed = time.monotonic() - t
    p.stop()
    return agg, elapsed, p


def test_replay_paces_by_speed(tmp_path: Path) -> None:
    rec = tmp_path / "r.llmtop"
    events, span = make_recording(rec)
    assert span > 0.15
    agg, slow, p = run_replay(ReplaySource.open(rec, speed=1.0))
    assert agg.snapshot() == events and len(p.counters.history("process", "cpu_pct")) == 20
    assert agg.source.kind == "replay" and agg.source.extra["recorded_kind"] == "live"
    assert slow >= span * 0.9
    agg, fast, _ = run_replay(ReplaySource.open(rec, speed=4.0))
    assert agg.snapshot() == events and fast < slow * 0.6
    agg, asap, _ = run_replay(ReplaySource.open(rec, speed=0))
    assert agg.snapshot() == events and asap < slow


def test_replay_pause_resume_and_speed_change(tmp_path: Path) -> None:
    rec = tmp_path / "r.llmtop"
    events, _ = make_recording(rec, steps=30)
    src = ReplaySource.open(rec, speed=1.0)
    agg = SinkAggregator()
    p = Pipeline(agg)
    p.add(src)
    src.pause()
    p.start()
    time.sleep(0.3)
    assert agg.snapshot() == 0 and src.paused  # nothing moves while paused
    src.set_speed(0)  # then as fast as possible
    src.resume()
    assert p.wait_done(10)
    p.stop()
    assert agg.snapshot() == events
    with pytest.raises(LlmtopError, match="speed"):
        src.set_speed(-1)


def test_replay_truncated_and_bad_files(tmp_path: Path) -> None:
    rec = tmp_path / "r.llmtop"
    events, _ = make_recording(rec, steps=5)
    rec.write_bytes(rec.read_bytes()[:-7])
    src = ReplaySource.open(rec, speed=0)
    agg, _, _ = run_replay(src)
    assert 0 < agg.snapshot() <= events
    assert src.warnings and "cut short" in src.warnings[0]
    summary = load_into(rec, SinkAggregator(), CounterStore())
    assert summary.warnings and summary.format == "llmtop"
    bad = tmp_path / "bad.txt"
    bad.write_text("hello, not a trace\n")
    with pytest.raises(LlmtopError):
        ReplaySource.open(bad)
    with pytest.raises(LlmtopError, match="no such file"):
        ReplaySource.open(tmp_path / "missing.llmtop")


def test_live_and_replay_pipeline_builders(tmp_path: Path) -> None:
    from llmtop.collectors.pipeline import live_pipeline, replay_pipeline

    eng = SyntheticEngine(n_layers=2, step_time_s=0.002)
    eng.max_batch = 2
    with pytest.raises(LlmtopError, match="max batch"):
        live_pipeline(eng, SinkAggregator(), batch=3)
    rec = tmp_path / "l.llmtop"
    agg = SinkAggregator()
    p = live_pipeline(eng, agg, batch=2, max_new_tokens=3, loop=False, record=str(rec), gpu=True)
    assert [c.name for c in p.collectors] == ["engine", "process", "gpu"]
    p.start()
    assert not p.wait_done(0.1)  # the process collector runs until stopped
    deadline = time.monotonic() + 30
    while p.collectors[0].alive and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    p.stop()
    assert agg.steps == 3 * -(-len(BUILTIN_PROMPTS) // 2)
    agg2 = SinkAggregator()
    p2, src = replay_pipeline(str(rec), agg2, speed=0)
    p2.start()
    assert p2.wait_done(20)
    p2.stop()
    assert src.emitted_records > 0 and not src.warnings
    assert agg2.snapshot() == agg.snapshot() and agg2.source.model == "synthetic"


def test_recorder_backlog_is_bounded_when_nothing_drains() -> None:
    """`serve --agent off` finishes steps that nobody drains: the recorder keeps the newest max_pending
    and counts the rest, instead of growing for the life of the server."""
    from llmtop.kernels.base import KernelRecorder

    rec = KernelRecorder()
    rec.max_pending = 5
    for i in range(12):
        rec.begin_step(1, i, 1, 1, i)
        rec.add(*rec.kernel_id("x", "other"), -1, 0, 10)
        rec.end_step()
    b = rec.drain()
    assert b is not None and list(b.steps["step"]) == [7, 8, 9, 10, 11]
    assert rec.backlog_dropped == 7


def test_steps_the_recorder_drops_are_counted_as_the_engines_drops() -> None:
    """A recorder whose backlog overflows (the drain fell far behind) drops whole steps: they must show in
    the report's `dropped` like queue drops, not vanish."""
    agg = SinkAggregator()
    eng = SyntheticEngine(n_layers=2, step_time_s=0.0005)
    eng.ops.recorder.max_pending = 4  # the drain wakes every 0.3 s; steps end every ~1 ms
    p = Pipeline(agg, report_interval=0.1)
    c = p.add(EngineCollector(eng, loop=True, max_new_tokens=8, drain_interval=0.3))
    p.start()
    try:
        deadline = time.monotonic() + 10
        while eng.ops.recorder.backlog_dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.7)  # two more drains: the count reaches the collector and the pipeline
    finally:
        p.stop()
    rec = eng.ops.recorder
    lost = rec.backlog_dropped + rec.backlog_dropped_rows  # the steps and their kernel rows
    assert rec.backlog_dropped > 0 and rec.backlog_dropped_rows > 0
    assert c.dropped_events == lost and agg.dropped["engine"] == lost


def test_worker_status_frames_carry_its_recorder_drops() -> None:
    """The engine worker reports its collector's cumulative drops in STATUS frames; the parent adds each
    increase to its own count once (frames repeat the running total)."""
    from llmtop import codec
    from llmtop.collectors.engine_process import EngineProcessCollector
    from llmtop.collectors.engine_worker import EngineSpec

    c = EngineProcessCollector(EngineSpec())
    for total in (0, 5, 5, 12):
        assert c._handle((codec.STATUS, codec.json_frame(codec.STATUS, {"cpu_s": 0.1, "dropped": total})[5:]))
    assert c.dropped_events == 12


def test_the_default_loop_continues_a_conversation_so_the_context_grows() -> None:
    """Loop mode with the built-in prompts: each round's prompt is the conversation so far plus the next
    question, so prompt lengths grow round by round until the context limit, then start over."""
    from llmtop.collectors.engine import Conversation
    from llmtop.kernels.torch_backend import TorchOps
    from llmtop.model.config import ModelConfig
    from llmtop.model.engine import Engine
    from llmtop.model.loader import LoadedModel
    from llmtop.model.presets import random_weights

    cfg = ModelConfig(name="tiny", vocab_size=97, hidden_size=32, intermediate_size=48, n_layers=1, n_heads=2,
                      n_kv_heads=1, head_dim=16, max_context=400, rms_eps=1e-5, rope_theta=1e4)
    eng = Engine(LoadedModel(cfg, random_weights(cfg), None, "preset:tiny", True), TorchOps(threads=1))
    eng.eos_ids = frozenset()
    agg = SinkAggregator()
    p = Pipeline(agg)
    c = p.add(EngineCollector(eng, loop=True, rounds=10, max_new_tokens=8))
    assert c.conversations and isinstance(c.conversations[0], Conversation)
    with p:
        p.wait_done()
    import numpy as np

    steps = np.concatenate([b.steps for b in agg.batches])
    prefill_lens = steps["tokens"][steps["phase"] == 0].tolist()
    assert len(prefill_lens) == 10
    grew = [prefill_lens[i + 1] > prefill_lens[i] for i in range(len(prefill_lens) - 1)]
    assert grew[0] and grew[1] and c.conversations[0].restarts >= 1, prefill_lens
    assert max(prefill_lens) + 8 <= 400
    # an explicit prompt list keeps the old behaviour: the same prompts every round
    assert not EngineCollector(eng, prompts=["a"], loop=True).conversations
