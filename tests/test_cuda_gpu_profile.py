"""GPU busy vs idle from CUPTI records (llmtop/kernels/gpu_profile.py), on a recorded Kineto trace from an
A100 (tests/fixtures/kineto) and on synthetic intervals; the sampler with a fake profiler."""

from __future__ import annotations

import gzip
import json

import numpy as np
from fixture_paths import HTA_A100

from llmtop.kernels.gpu_profile import StepSampler, chrome_intervals, split_step, union_ns


def _merged_length(iv: list[tuple[int, int]]) -> int:
    """An independent union: walk the sorted intervals, extending the current run."""
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(iv):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0)


def test_busy_idle_of_a_recorded_a100_trace():
    with gzip.open(HTA_A100) as f:
        events = json.load(f)["traceEvents"]
    iv = chrome_intervals(events)
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    assert len(iv) == len(gpu) == 79 + 16 + 3
    assert union_ns(iv) == _merged_length([tuple(x) for x in iv.tolist()])
    # two kernels on stream 20 overlap ones on stream 7 by 29 us each: busy counts that time once
    assert {e["args"]["stream"] for e in gpu} == {7, 20}
    assert union_ns(iv) == sum(round(e["dur"] * 1000) for e in gpu) - 2 * 29_000
    span = int(iv[:, 1].max() - iv[:, 0].min())
    s = split_step(iv, wall_ns=span + 5_000_000)
    assert s.busy_ns + s.idle_ns == span and s.host_ns == 5_000_000 and s.activities == len(gpu)
    assert s.launch_bound  # a small eager model with host gaps: the GPU mostly waits
    assert s.as_dict()["launch_bound"] is True


def test_union_counts_overlaps_once():
    iv = np.array([[0, 10], [5, 12], [20, 30], [21, 22], [29, 40], [50, 50]], dtype=np.int64)
    assert union_ns(iv) == _merged_length(iv.tolist()) == 12 + 20
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = rng.integers(0, 1000, 40)
        iv = np.stack([s, s + rng.integers(0, 80, 40)], axis=1)
        assert union_ns(iv) == _merged_length(iv.tolist())
    assert union_ns(np.zeros((0, 2), np.int64)) == 0
    gpu_bound = split_step(np.array([[0, 90], [90, 100]]), wall_ns=104)
    assert (gpu_bound.busy_ns, gpu_bound.idle_ns, gpu_bound.host_ns) == (100, 0, 4)
    assert not gpu_bound.launch_bound
    none = split_step(np.zeros((0, 2), np.int64), wall_ns=7)
    assert none.host_ns == 7 and none.busy_ns == 0


class _FakeProfiler:
    def __init__(self, iv):
        self.iv, self.started, self.stopped = iv, False, False

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True


def test_sampler_profiles_one_step_every_interval():
    now = [0.0]
    made = []

    def make():
        made.append(_FakeProfiler(np.array([[0, 3_000], [8_000, 10_000]], dtype=np.int64)))
        return made[-1]

    sm = StepSampler(every_s=2.0, profiler=make, intervals=lambda p: p.iv, clock=lambda: now[0])
    for step in range(10):
        sm.before_step()
        sm.after_step(step, 20_000)
        now[0] += 0.5
    assert [s for s, _ in sm.splits] == [0, 4, 8] and all(p.started and p.stopped for p in made)
    sp = sm.splits[0][1]
    assert (sp.busy_ns, sp.idle_ns, sp.host_ns) == (5_000, 5_000, 10_000)


def test_sampler_gives_up_when_the_profiler_cannot_start():
    def broken():
        raise RuntimeError("CUPTI unavailable")

    sm = StepSampler(profiler=broken)
    for step in range(3):
        sm.before_step()
        sm.after_step(step, 1)
    assert sm.errors == 1 and not sm.splits


def test_recorder_hooks_call_the_sampler(monkeypatch):
    """The CudaEventRecorder starts the sampler's profiler before a step's wall and stops it after."""
    import time

    from llmtop.events import DECODE
    from llmtop.kernels.cuda_events import CudaEventRecorder

    _fake_events(monkeypatch)
    calls = []

    class S:
        active = False

        def before_step(self):
            calls.append(("before", time.perf_counter_ns()))

        def after_step(self, step, wall):
            calls.append(("after", step, wall))

    rec = CudaEventRecorder(pool_size=8)
    rec.sampler = S()
    rec.begin_step(DECODE, 7, 1, 1, 3)
    rec.end_step()
    (before, t), (after, step, wall) = calls
    assert before == "before" and t <= rec._done[0][2] and after == "after" and step == 7
    assert wall >= rec._done[0][3]


def _fake_events(monkeypatch):
    import time

    import torch

    class Ev:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self, stream=None):
            self.t = time.perf_counter_ns()

        def query(self):
            return True

        def elapsed_time(self, end):
            return (end.t - self.t) / 1e6

    monkeypatch.setattr(torch.cuda, "Event", Ev)


def test_sampled_steps_carry_busy_and_idle_to_the_report(monkeypatch):
    """A sampled step's split rides on its step row (busy_ns / idle_ns) through the drain, and the report's
    attribution shows it per phase: the path from CUPTI to the screen, with a fake profiler."""
    from llmtop.events import DECODE, PREFILL
    from llmtop.kernels.cuda_events import CudaEventRecorder
    from llmtop.report import render
    from llmtop.stats.aggregator import Aggregator

    _fake_events(monkeypatch)
    now = [0.0]
    # decode: 1 us of kernels in a 4 us GPU span (launch-bound); prefill: 9 of 10 us busy
    shapes = {PREFILL: [[0, 9_000], [9_500, 10_000]], DECODE: [[0, 500], [3_500, 4_000]]}
    phase_now = [PREFILL]

    def make():
        return _FakeProfiler(np.array(shapes[phase_now[0]], dtype=np.int64))

    rec = CudaEventRecorder(pool_size=64)
    rec.sampler = StepSampler(every_s=1.0, profiler=make, intervals=lambda p: p.iv, clock=lambda: now[0])
    for step in range(8):
        phase_now[0] = PREFILL if step == 0 else DECODE
        rec.begin_step(phase_now[0], step, 4 if step == 0 else 1, 1, 4 + step)
        rec.end_step()
        now[0] += 0.5  # every second step is sampled: 0 (prefill), 2, 4, 6
    batch = rec.drain()
    st = batch.steps
    sampled = st["busy_ns"] > 0
    assert st["step"][sampled].tolist() == [0, 2, 4, 6]
    assert st["busy_ns"][sampled].tolist() == [9_500, 1_000, 1_000, 1_000]
    assert st["idle_ns"][sampled].tolist() == [500, 3_000, 3_000, 3_000]
    assert not rec._splits  # every split was handed on
    agg = Aggregator(window_s=60)
    agg.ingest(batch)
    att = agg.snapshot(mode="cumulative").report["attribution"]
    dec, pre = att["decode"]["gpu"], att["prefill"]["gpu"]
    assert dec["sampled_steps"] == 3 and dec["launch_bound"] and dec["launch_bound_steps"] == 3
    assert abs(dec["busy_ms_per_step"] - 1e-3) < 1e-12 and abs(dec["idle_ms_per_step"] - 3e-3) < 1e-12
    assert dec["host_ms_per_step"] >= 0
    assert abs(dec["busy_pct"] + dec["idle_pct"] + dec["host_pct"] - 100) < 1e-6
    assert pre["sampled_steps"] == 1 and not pre["launch_bound"]
    text = render(agg.snapshot(mode="cumulative").report, "text")
    assert "GPU busy vs idle" in text and "LAUNCH-BOUND (3 steps)" in text


def test_unsampled_runs_have_no_gpu_split():
    from llmtop.events import DECODE
    from llmtop.kernels.base import KernelRecorder
    from llmtop.report import render
    from llmtop.stats.aggregator import Aggregator

    rec = KernelRecorder()
    rec.begin_step(DECODE, 0, 1, 1, 3)
    rec.end_step()
    agg = Aggregator(window_s=60)
    agg.ingest(rec.drain())
    rep = agg.snapshot(mode="cumulative").report
    assert rep["attribution"]["decode"]["gpu"] is None
    assert "GPU busy vs idle" not in render(rep, "text")
