"""Snapshot caches (merged cold slices, per-cell orderings) never change a number.

An aggregator that is snapshotted after every batch (so its caches are built early and then reused,
extended with new cells, or invalidated by late events, head moves and rebinning) must give the same
report as a fresh aggregator that sees the same events and is snapshotted once at the end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llmtop.events import KERNEL_DTYPE, OP_CLASSES, STEP_DTYPE, EventBatch, SourceInfo
from llmtop.stats import Aggregator
from llmtop.stats import aggregator as aggregator_mod
from llmtop.stats.views import GROUPS, MODES

T0 = 7_000_000_000_000
N_NAMES = 30


def stream(seed: int, n_batches: int = 40, per: int = 600) -> list[EventBatch]:
    """Batches over ~25 s of event time: new kernels and wider durations keep appearing (new cells);
    a fifth of each batch starts up to 1.5 s before the batch, and every third batch is followed by
    one of late events only (into older slices, without moving the head slice)."""
    rng = np.random.default_rng(seed)
    names = [f"kernel_{i:02d}" for i in range(N_NAMES)]
    out = []
    step = 0
    for b in range(n_batches):
        k = np.zeros(per, KERNEL_DTYPE)
        n_known = min(N_NAMES, 5 + b)  # a new kernel name now and then
        k["name"] = rng.integers(0, n_known, per)
        k["op_class"] = k["name"] % len(OP_CLASSES)
        k["phase"] = (rng.random(per) < 0.9).astype(np.uint8)
        k["layer"] = k["name"] % 7 - 1
        t_batch = T0 + int(b * 0.6e9)
        start = t_batch + np.sort(rng.integers(0, int(0.6e9), per))
        late = rng.random(per) < 0.2
        start[late] -= rng.integers(0, int(1.5e9), int(late.sum()))
        k["start_ns"] = start
        k["step"] = step + np.arange(per) // 100
        k["ctx"] = 10 + k["step"] * 40  # grows past the first attention-context bucket widths (rebinning)
        spread = 0.2 + b / 20  # durations spread wider over time: new duration buckets (cells)
        dur = 20_000 * (1 + k["name"]) * rng.lognormal(0, spread, per)
        k["dur_ns"] = np.maximum(1, dur).astype(np.int64)
        mm = k["op_class"] == OP_CLASSES.index("matmul")
        k["m"][mm], k["n"][mm], k["k"][mm] = 1, 576, 576
        n_steps = per // 100
        st = np.zeros(n_steps, STEP_DTYPE)
        st["phase"] = 1
        st["step"] = step + np.arange(n_steps)
        st["tokens"] = st["batch"] = 1
        st["ctx"] = 10 + st["step"] * 40
        st["start_ns"] = t_batch + np.arange(n_steps) * 100_000_000
        st["dur_ns"] = 90_000_000
        st["kernel_ns"] = 80_000_000
        step += n_steps
        out.append(EventBatch(kernels=k, steps=st, names_base=0 if b == 0 else N_NAMES,
                              new_names=names if b == 0 else []))
        if b % 3 == 2:  # a batch of late events only: older slices change while the head stays put
            late_k = k[: per // 4].copy()
            late_k["start_ns"] = t_batch - rng.integers(int(0.3e9), int(1.2e9), len(late_k))
            late_k["step"] = step
            step += 1
            out.append(EventBatch(kernels=late_k, names_base=N_NAMES))
    return out


def agg() -> Aggregator:
    a = Aggregator(window_s=5.0, clock=lambda: 100.0)
    a.set_source(SourceInfo(kind="test", max_context=4096, n_layers=6))
    return a


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "collectors"}


@pytest.mark.parametrize("seed", [0, 1])
def test_incremental_snapshots_equal_a_fresh_aggregator(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(aggregator_mod, "COALESCE", 1)  # fold each batch now: caches see every change
    batches = stream(seed)
    live, twin = agg(), agg()
    views = [(m, g, f) for m in MODES for g in GROUPS for f in ("", "phase:decode", "kernel_1")]
    for i, b in enumerate(batches):
        live.ingest(b)
        twin.ingest(b)
        m, g, f = views[i % len(views)]
        got = live.snapshot(mode=m, group=g, filter=f)  # builds / extends / invalidates the caches
        twin._merge_cache.clear()  # the same aggregator state, computed without any cache
        twin._cell_cache.clear()
        want = twin.snapshot(mode=m, group=g, filter=f)
        assert comparable(got.report) == comparable(want.report), (i, m, g, f)
    fresh = agg()
    for b in batches:
        fresh.ingest(b)
    for m, g, f in views:
        got = live.snapshot(mode=m, group=g, filter=f)
        want = fresh.snapshot(mode=m, group=g, filter=f)
        assert comparable(got.report) == comparable(want.report), (m, g, f)
        assert len(got.report["kernels"]) > 0
        name = got.report["kernels"][0]["name"]
        assert got.kernel_detail(name) == want.kernel_detail(name)


def test_cached_merge_is_not_mutated_by_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots add open attention steps and the head slice to a copy, never to the cached merge."""
    monkeypatch.setattr(aggregator_mod, "COALESCE", 1)
    batches = stream(3, n_batches=12)
    a = agg()
    for b in batches:
        a.ingest(b)
    first = a.snapshot(mode="cumulative").report
    for _ in range(3):
        assert comparable(a.snapshot(mode="cumulative").report) == comparable(first)


def test_kernel_rows_are_plain_json_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel and layer rows skip the deep _plain walk: they must already be plain Python values."""
    monkeypatch.setattr(aggregator_mod, "COALESCE", 1)
    a = agg()
    for b in stream(4, n_batches=6):
        a.ingest(b)
    rep = a.snapshot(group="layer").report

    def check(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                assert type(k) is str
                check(v)
        elif isinstance(x, list):
            for v in x:
                check(v)
        else:
            assert x is None or type(x) in (str, int, float, bool), (type(x), x)

    check(rep["kernels"])
    check(rep["layers"])
    assert rep["kernels"] and rep["layers"]
