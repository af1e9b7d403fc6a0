"""llmtop.stats.Aggregator checked against direct numpy computations on generated event streams."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmtop.errors import LlmtopError
from llmtop.events import KERNEL_DTYPE, NO_LAYER, OP_CLASSES, STEP_DTYPE, EventBatch, NameTable, SourceInfo
from llmtop.kernels.base import KERNEL_NAMES, KernelRecorder
from llmtop.stats import ALPHA, Aggregator
from llmtop.stats import aggregator as aggregator_mod
from llmtop.stats.aggregator import N_SLICES
from llmtop.stats.buckets import bucket_index

WINDOW_S = 10.0
SLICE_NS = round(WINDOW_S * 1e9 / N_SLICES)
T0 = 5_000_000_000_000  # an arbitrary monotonic-clock origin


@pytest.fixture
def no_coalesce(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fold every batch as it arrives, so tests exercise steps split across batches."""
    monkeypatch.setattr(aggregator_mod, "COALESCE", 1)


# -- generated data -------------------------------------------------------------------------------
def random_kernels(
    seed: int,
    n: int = 20_000,
    n_names: int = 40,
    n_layers: int = 8,
    span_s: float = 30.0,
) -> tuple[list[str], np.ndarray]:
    """Events with many kernels/layers/phases, ~one step per 60 events, over span_s seconds."""
    rng = np.random.default_rng(seed)
    names = [f"kern_{i:02d}" for i in range(n_names)]
    k = np.zeros(n, KERNEL_DTYPE)
    k["name"] = rng.integers(0, n_names, n)
    k["op_class"] = k["name"] % len(OP_CLASSES)
    k["phase"] = (rng.random(n) < 0.8).astype(np.uint8)
    k["layer"] = rng.integers(-1, n_layers, n)
    k["start_ns"] = T0 + np.sort(rng.integers(0, int(span_s * 1e9), n))
    k["step"] = np.arange(n) // 60
    med = np.exp(rng.uniform(np.log(2e3), np.log(5e6), n_names))  # 2 µs .. 5 ms medians per kernel
    k["dur_ns"] = np.maximum(1, (med[k["name"]] * rng.lognormal(0, 0.6, n)).astype(np.int64))
    return names, k


def split_batches(
    names: list[str], k: np.ndarray, steps: np.ndarray | None, sizes: list[int]
) -> list[EventBatch]:
    out, i, first = [], 0, True
    for s in sizes:
        part = k[i : i + s]
        if not len(part):
            break
        st = (
            steps[(steps["start_ns"] >= part["start_ns"][0]) & (steps["start_ns"] <= part["start_ns"][-1])]
            if steps is not None
            else np.zeros(0, STEP_DTYPE)
        )
        out.append(
            EventBatch(
                kernels=part,
                steps=st,
                names_base=0 if first else len(names),
                new_names=list(names) if first else [],
            )
        )
        first, i = False, i + s
    return out


def feed(agg: Aggregator, batches: list[EventBatch]) -> Aggregator:
    for b in batches:
        agg.ingest(b)
    return agg


def random_sizes(rng: np.random.Generator, n: int) -> list[int]:
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 3000)))
    return sizes


def in_scope(start: np.ndarray, mode: str, head_slice: int) -> np.ndarray:
    if mode == "cumulative":
        return np.ones(len(start), bool)
    return start // SLICE_NS >= head_slice - N_SLICES + 1


def inverted_cdf(x: np.ndarray, q: float) -> float:
    xs = np.sort(x)
    return float(xs[max(1, math.ceil(q * len(xs))) - 1])


# -- kernel table ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["window", "cumulative"])
@pytest.mark.parametrize("group", ["kernel", "op_class", "layer"])
def test_kernel_table_matches_numpy(mode: str, group: str) -> None:
    names, k = random_kernels(1)
    agg = feed(
        Aggregator(WINDOW_S), split_batches(names, k, None, random_sizes(np.random.default_rng(2), len(k)))
    )
    rows = agg.snapshot(mode=mode, group=group).report["kernels"]

    sel = in_scope(k["start_ns"], mode, int(k["start_ns"].max() // SLICE_NS))
    ks = k[sel]
    assert 0 < len(ks) < len(k) or mode == "cumulative"
    col = {"kernel": ks["name"], "op_class": ks["op_class"], "layer": ks["layer"]}[group]
    label = {
        "kernel": lambda v: names[v],
        "op_class": lambda v: OP_CLASSES[v],
        "layer": lambda v: "no layer" if v == NO_LAYER else f"layer {v}",
    }[group]
    d = ks["dur_ns"].astype(np.float64)
    grand = d.sum()
    by_name = {r["name"]: r for r in rows}
    assert len(rows) == len(np.unique(col))
    for v in np.unique(col):
        x = d[col == v]
        r = by_name[label(int(v))]
        assert r["count"] == len(x)
        assert r["total_ms"] == pytest.approx(x.sum() / 1e6, rel=1e-12)
        assert r["mean_ms"] == pytest.approx(x.mean() / 1e6, rel=1e-12)
        assert r["min_ms"] == x.min() / 1e6 and r["max_ms"] == x.max() / 1e6
        assert r["std_ms"] == pytest.approx(
            np.std(x, ddof=1) / 1e6 if len(x) > 1 else 0.0, rel=1e-6, abs=1e-12
        )
        assert r["pct"] == pytest.approx(100 * x.sum() / grand, rel=1e-9)
        for key, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            exact = inverted_cdf(x, q)
            assert exact == float(np.quantile(x, q, method="inverted_cdf"))
            assert abs(r[key] * 1e6 - exact) <= ALPHA * exact * (1 + 1e-9), (v, key)
    totals = [r["total_ms"] for r in rows]
    assert totals == sorted(totals, reverse=True)
    assert rows[-1]["cum_pct"] == pytest.approx(100.0)
    assert np.all(np.diff([r["cum_pct"] for r in rows]) >= 0)


def test_batch_split_does_not_change_the_report(no_coalesce: None) -> None:
    names, k = random_kernels(3, n=8000)
    one = feed(Aggregator(WINDOW_S), split_batches(names, k, None, [len(k)]))
    many = feed(
        Aggregator(WINDOW_S), split_batches(names, k, None, random_sizes(np.random.default_rng(4), len(k)))
    )
    for mode in ("window", "cumulative"):
        a, b = one.snapshot(mode).report, many.snapshot(mode).report
        assert a["kernels"] == b["kernels"]  # counts, totals (integer ns), quantiles: exact
        assert a["layers"] == b["layers"]


def test_sort_keys_and_filter() -> None:
    names, k = random_kernels(5, n=6000)
    agg = feed(Aggregator(WINDOW_S), split_batches(names, k, None, [1000] * 6))
    for sort, key in (("count", "count"), ("mean", "mean_ms"), ("p95", "p95_ms"), ("max", "max_ms")):
        vals = [r[key] for r in agg.snapshot("cumulative", sort=sort).report["kernels"]]
        assert vals == sorted(vals, reverse=True)
    by_name = [r["name"] for r in agg.snapshot("cumulative", sort="name").report["kernels"]]
    assert by_name == sorted(by_name)

    rows = agg.snapshot("cumulative", filter="KERN_1 layer:3 phase:decode").report["kernels"]
    m = (
        (k["layer"] == 3)
        & (k["phase"] == 1)
        & np.isin(k["name"], [i for i, n in enumerate(names) if "kern_1" in n])
    )
    assert sum(r["count"] for r in rows) == int(m.sum())
    assert {r["name"] for r in rows} == {names[i] for i in np.unique(k["name"][m])}
    assert sum(r["pct"] for r in rows) == pytest.approx(100.0)
    rows = agg.snapshot("cumulative", group="layer", filter="class:norm layer:none").report["kernels"]
    m = (k["op_class"] == OP_CLASSES.index("norm")) & (k["layer"] == NO_LAYER)
    assert [r["name"] for r in rows] == ["no layer"] and rows[0]["count"] == int(m.sum())
    assert rows[0]["layer"] is None
    assert agg.snapshot(filter="no_such_kernel").report["kernels"] == []


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "x"},
        {"group": "x"},
        {"sort": "x"},
        {"filter": "layer:x"},
        {"filter": "phase:x"},
        {"filter": "class:x"},
    ],
)
def test_bad_snapshot_arguments(bad: dict[str, str]) -> None:
    with pytest.raises(LlmtopError):
        Aggregator().snapshot(**bad)


@pytest.mark.parametrize("w", [0, -1, float("nan"), "ten"])
def test_bad_window(w: object) -> None:
    with pytest.raises(LlmtopError):
        Aggregator(w)  # type: ignore[arg-type]


def test_unknown_name_id_and_name_gap() -> None:
    k = np.zeros(1, KERNEL_DTYPE)
    k["name"] = 3
    with pytest.raises(LlmtopError, match="name table"):
        Aggregator().ingest(EventBatch(kernels=k, names_base=0, new_names=["a"]))
    with pytest.raises(LlmtopError, match="gap"):
        Aggregator().ingest(EventBatch(kernels=k, names_base=5, new_names=["a"]))


def test_window_eviction_and_bounded_memory() -> None:
    """An hour of events: live slices stay <= 20 and the cell count stops growing."""
    rng = np.random.default_rng(6)
    agg = Aggregator(WINDOW_S)
    names = [f"k{i}" for i in range(30)]
    cells, seen = [], set()
    for minute in range(60):
        n = 3000
        k = np.zeros(n, KERNEL_DTYPE)
        k["name"] = rng.integers(0, 30, n)
        k["layer"] = rng.integers(0, 4, n)
        k["phase"] = 1
        k["start_ns"] = T0 + int(minute * 60e9) + np.sort(rng.integers(0, int(60e9), n))
        k["dur_ns"] = (1e5 * rng.lognormal(0, 0.3, n)).astype(np.int64)
        agg.ingest(EventBatch(kernels=k, names_base=0, new_names=names if minute == 0 else []))
        seen |= set(
            zip(k["name"].tolist(), k["layer"].tolist(), bucket_index(k["dur_ns"]).tolist(), strict=True)
        )
        cells.append(agg._ix.nc)
        assert len(agg._live) <= N_SLICES
    # state = one cell per distinct (kernel, layer, phase, bucket) seen; it saturates, events do not matter
    assert agg._ix.nc == len(seen)
    assert cells[-1] < 120 * 128  # 120 keys; +-4 sigma of ln-sigma 0.3 spans 120 buckets of 2 %
    assert len(agg._archive.hist) <= 2 * agg._ix.nc
    cum = agg.snapshot("cumulative").report
    win = agg.snapshot("window").report
    assert sum(r["count"] for r in cum["kernels"]) == 60 * 3000
    assert sum(r["count"] for r in win["kernels"]) < 3000
    assert cum["span_s"] > 3500 and win["span_s"] <= WINDOW_S


def test_reset_forgets_statistics_but_keeps_names() -> None:
    names, k = random_kernels(7, n=4000)
    agg = feed(Aggregator(WINDOW_S), split_batches(names, k, None, [2000, 2000]))
    agg.note_dropped("engine", 5)
    agg.reset()
    r = agg.snapshot("cumulative").report
    assert r["kernels"] == [] and r["dropped"]["total"] == 0 and r["tokens"]["generated"] == 0
    later = k[2000:].copy()
    agg.ingest(EventBatch(kernels=later, names_base=len(names), new_names=[]))
    fresh = Aggregator(WINDOW_S)
    fresh.ingest(EventBatch(kernels=later, names_base=0, new_names=list(names)))
    assert agg.snapshot("cumulative").report["kernels"] == fresh.snapshot("cumulative").report["kernels"]


# -- a decode loop: layers, tokens, attention, attribution, trend --------------------------------------
LAYER_SEQ = [
    "rmsnorm:attn_norm",
    "matmul:q_proj",
    "matmul:k_proj",
    "matmul:v_proj",
    "rope",
    "memcpy:kv_write",
    "attention",
    "matmul:o_proj",
    "add:attn_residual",
    "rmsnorm:ffn_norm",
    "matmul:gate_proj",
    "matmul:up_proj",
    "silu_mul",
    "matmul:down_proj",
    "add:ffn_residual",
]


def decode_loop(
    seed: int,
    *,
    n_layers: int = 6,
    gens: int = 3,
    prompt: int = 24,
    new: int = 40,
    batch: int = 1,
    attn: tuple[float, float, float] = (2e4, 40.0, 0.0),
    slow_layer: int | None = 2,
    overlap: bool = False,
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Steps the way the engine records them: one kernel array and one step row per step."""
    rng = np.random.default_rng(seed)
    rec = KernelRecorder()
    names = rec.names.names
    base = {n: rng.uniform(5e3, 1e5) for n in KERNEL_NAMES}
    ks, ss, t, step = [], [], T0, 0
    for _ in range(gens):
        ctx = prompt
        for tok in range(new + 1):
            phase, ntok = (0, prompt) if tok == 0 else (1, 1)
            ctx += 0 if tok == 0 else 1
            seq = (
                [("embedding", NO_LAYER)]
                + [(n, li) for li in range(n_layers) for n in LAYER_SEQ]
                + [("rmsnorm:final_norm", NO_LAYER), ("matmul:lm_head", NO_LAYER), ("sampling", NO_LAYER)]
            )
            rows, t0 = [], t
            for n, li in seq:
                if n == "attention":
                    n = "attention:decode" if phase else "attention:prefill"
                    a0, a1, a2 = attn
                    dur = a0 + a1 * ctx + a2 * ctx * ctx + rng.normal(0, 300)
                else:
                    dur = base[n] * rng.lognormal(0, 0.2) * ntok
                if li == slow_layer and n == "matmul:down_proj":
                    dur *= 8
                nid, oc = rec.ids[n]
                mnk = (ntok, 64, 96) if n.startswith("matmul") else (0, 0, 0)
                rows.append((nid, oc, phase, li, 0, step, 1, ctx, t, max(1, int(dur)), *mnk))
                t += max(1, int(dur)) + int(rng.integers(100, 3000))
            kk = np.array(rows, KERNEL_DTYPE)
            wall = t - t0 + int(rng.integers(1000, 80_000))
            kern = int(kk["dur_ns"].sum())
            if overlap and tok % 2:
                wall = kern // 2  # a multi-stream trace: kernels overlap, sum exceeds the wall
            ks.append(kk)
            # step tokens are totals over the batch, as the engine records them
            row = (phase, 0, step, ntok * batch, batch, ctx, t0, wall, kern, 0, 0)
            ss.append(np.array([row], STEP_DTYPE))
            t, step = t0 + wall + int(rng.integers(0, 20_000)), step + 1
    return list(names), ks, ss


def loop_batches(names: list[str], ks: list[np.ndarray], ss: list[np.ndarray], per: int) -> list[EventBatch]:
    out = []
    for i in range(0, len(ks), per):
        out.append(
            EventBatch(
                kernels=np.concatenate(ks[i : i + per]),
                steps=np.concatenate(ss[i : i + per]),
                names_base=0 if i == 0 else len(names),
                new_names=list(names) if i == 0 else [],
            )
        )
    return out


def test_layers_tokens_attribution_trend_match_numpy(no_coalesce: None) -> None:
    names, ks, ss = decode_loop(8)
    agg = Aggregator(WINDOW_S)
    agg.set_source(SourceInfo(kind="live", max_context=8192, n_layers=6))
    feed(agg, loop_batches(names, ks, ss, 7))
    r = agg.snapshot("cumulative").report
    k, s = np.concatenate(ks), np.concatenate(ss)

    # layers: mean ms per decode step by op class; the 8x down_proj layer is the only outlier
    dec = k[k["phase"] == 1]
    n_dec = len(np.unique(dec["step"]))
    for row in r["layers"]:
        m = dec["layer"] == row["layer"]
        assert row["ms_per_step"] == pytest.approx(dec["dur_ns"][m].sum() / 1e6 / n_dec, rel=1e-12)
        for cls, ms in row["by_op_class"].items():
            mm = m & (dec["op_class"] == OP_CLASSES.index(cls))
            assert ms == pytest.approx(dec["dur_ns"][mm].sum() / 1e6 / n_dec, rel=1e-12)
    assert [row["layer"] for row in r["layers"] if row["outlier"]] == [2]

    # tokens
    pre, dsteps = s[s["phase"] == 0], s[s["phase"] == 1]
    tok = r["tokens"]
    assert abs(tok["ttft_ms"] * 1e6 - inverted_cdf(pre["dur_ns"], 0.5)) <= ALPHA * inverted_cdf(
        pre["dur_ns"], 0.5
    )
    for key, q in (("tpot_ms_p50", 0.5), ("tpot_ms_p95", 0.95)):
        exact = inverted_cdf(dsteps["dur_ns"], q)
        assert abs(tok[key] * 1e6 - exact) <= ALPHA * exact * (1 + 1e-9)
    assert tok["decode_tok_s"] == pytest.approx(len(dsteps) / (dsteps["dur_ns"].sum() / 1e9), rel=1e-12)
    assert tok["prefill_tok_s"] == pytest.approx(pre["tokens"].sum() / (pre["dur_ns"].sum() / 1e9), rel=1e-12)
    assert tok["generated"] == len(dsteps) + len(pre)
    assert tok["decode_steps"] == len(dsteps) and tok["prefills"] == len(pre)
    assert tok["context"] == int(s["ctx"][-1])

    # attribution: wall vs timed kernels vs host per phase
    for p, pname in enumerate(("prefill", "decode")):
        x = s[s["phase"] == p]
        a = r["attribution"][pname]
        host = np.maximum(x["dur_ns"] - x["kernel_ns"], 0).sum()
        assert a["wall_ms"] == pytest.approx(x["dur_ns"].sum() / 1e6)
        assert a["kernel_ms"] == pytest.approx(x["kernel_ns"].sum() / 1e6)
        assert a["host_ms"] == pytest.approx(host / 1e6)
        assert a["kernel_pct"] + a["host_pct"] == pytest.approx(100.0)
        assert not a["clamped"]
        assert sum(a["by_op_class_ms"].values()) == pytest.approx(k["dur_ns"][k["phase"] == p].sum() / 1e6)

    # trend: the last generation's decode step walls
    last = dsteps["dur_ns"][-40:].astype(np.float64)
    t = r["trend"]
    assert t["steps"] == 40 and t["generation"] == "current"
    assert (t["first_ms"], t["middle_ms"], t["last_ms"]) == (last[0] / 1e6, last[20] / 1e6, last[-1] / 1e6)
    assert (t["min_ms"], t["max_ms"]) == (last.min() / 1e6, last.max() / 1e6)
    assert t["mean_ms"] == pytest.approx(last.mean() / 1e6)
    assert t["drift_pct"] == pytest.approx(100 * (last[-1] - last[0]) / last[0])
    assert t["slope_us_per_token"] == pytest.approx(np.polyfit(np.arange(40), last, 1)[0] / 1e3, rel=1e-6)


def attention_per_step(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = k[(k["phase"] == 1) & (k["op_class"] == OP_CLASSES.index("attention"))]
    steps, inv = np.unique(a["step"], return_inverse=True)
    y = np.bincount(inv, weights=a["dur_ns"]) / 1e6
    x = np.zeros(len(steps))
    np.maximum.at(x, inv, a["ctx"])
    return x, y


@pytest.mark.parametrize("per", [1, 5, 1000])
def test_attention_fit_matches_polyfit(per: int, no_coalesce: None) -> None:
    names, ks, ss = decode_loop(9, gens=2, prompt=100, new=320)
    agg = Aggregator(WINDOW_S)
    agg.set_source(SourceInfo(kind="live", max_context=8192))
    feed(agg, loop_batches(names, ks, ss, per))
    snap = agg.snapshot("cumulative")
    att = snap.report["attention"]
    x, y = attention_per_step(np.concatenate(ks))
    slope, icpt = np.polyfit(x / 1000.0, y, 1)
    assert att["steps"] == len(x)
    assert att["slope_us_per_1k"] == pytest.approx(slope * 1000, rel=1e-7)
    assert att["intercept_ms"] == pytest.approx(icpt, rel=1e-7)
    assert att["r2"] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-7)
    assert (att["ctx_min"], att["ctx_max"]) == (x.min(), x.max())
    assert att["superlinear"] is False
    proj = att["projection"]
    assert proj["ctx"] == 8192
    assert proj["attention_ms"] == pytest.approx(icpt + slope * 8.192, rel=1e-7)
    s = np.concatenate(ss)
    step_now = s["dur_ns"][s["phase"] == 1].mean() / 1e6
    step_proj = step_now - y.mean() + proj["attention_ms"]
    assert proj["pct_of_step"] == pytest.approx(100 * proj["attention_ms"] / step_proj, rel=1e-7)
    # the plotted points are bucket means of the same steps
    ser = snap.series
    assert ser.attention_steps.sum() == len(x)
    assert np.dot(ser.attention_ms, ser.attention_steps) == pytest.approx(y.sum(), rel=1e-9)


@pytest.mark.parametrize("per", [1, 7])
def test_attention_share_of_the_step_by_context(per: int) -> None:
    """share_by_ctx: per context bucket, Σ attention / Σ all decode kernels of its steps (steps split
    across batches included); it rises with context when attention grows and the rest does not."""
    names, ks, ss = decode_loop(9, gens=1, prompt=100, new=320)
    agg = feed(Aggregator(WINDOW_S), loop_batches(names, ks, ss, per))
    att = agg.snapshot("cumulative").report["attention"]
    k = np.concatenate(ks)
    dec = k[k["phase"] == 1]
    is_att = dec["op_class"] == OP_CLASSES.index("attention")
    by = att["share_by_ctx"]
    assert by and sum(b["steps"] for b in by) == att["steps"]
    for b in by:
        sel = (dec["ctx"] >= b["ctx_min"]) & (dec["ctx"] <= b["ctx_max"])
        want = 100 * dec["dur_ns"][sel & is_att].sum() / dec["dur_ns"][sel].sum()
        assert b["share_pct"] == pytest.approx(want, rel=1e-9)
    assert att["share_pct_first"] == by[0]["share_pct"] < att["share_pct_last"] == by[-1]["share_pct"]


def test_attention_superlinear_and_wide_contexts() -> None:
    """Quadratic growth is flagged; contexts past 256 buckets double the bucket width, fit stays exact."""
    names, ks, ss = decode_loop(
        10, n_layers=2, gens=1, prompt=4000, new=300, attn=(2e4, 5.0, 0.02), slow_layer=None
    )
    agg = feed(Aggregator(WINDOW_S), loop_batches(names, ks, ss, 3))
    att = agg.snapshot("cumulative").report["attention"]
    x, y = attention_per_step(np.concatenate(ks))
    assert agg._ctx_width > 16
    assert att["superlinear"] is True
    c2 = np.polyfit(x / 1000.0, y, 2)[0]
    assert att["quadratic"]["c_us_per_1k2"] == pytest.approx(c2 * 1000, rel=1e-4)
    assert att["slope_us_per_1k"] == pytest.approx(np.polyfit(x / 1000.0, y, 1)[0] * 1000, rel=1e-7)
    assert att["projection"] is None  # the source did not say its maximum context


def test_attention_step_split_across_batches(no_coalesce: None) -> None:
    names, ks, ss = decode_loop(11, gens=1, new=30)
    k, s = np.concatenate(ks), np.concatenate(ss)
    whole = feed(Aggregator(WINDOW_S), loop_batches(names, ks, ss, 1000))
    cuts = np.sort(np.random.default_rng(0).choice(len(k), 25, replace=False))  # cut inside steps
    parts = np.split(k, cuts)
    split = Aggregator(WINDOW_S)
    for i, p in enumerate(parts):
        split.ingest(
            EventBatch(kernels=p, names_base=0 if i == 0 else len(names), new_names=names if i == 0 else [])
        )
    split.ingest(EventBatch(steps=s, names_base=len(names)))
    a, b = whole.snapshot("cumulative").report, split.snapshot("cumulative").report
    assert a["attention"]["steps"] == b["attention"]["steps"] == 30
    assert b["attention"]["slope_us_per_1k"] == pytest.approx(a["attention"]["slope_us_per_1k"], rel=1e-9)
    assert a["layers"] == b["layers"]


def test_attribution_clamps_and_flags_overlap() -> None:
    names, ks, ss = decode_loop(12, gens=1, new=20, overlap=True)
    agg = feed(Aggregator(WINDOW_S), loop_batches(names, ks, ss, 4))
    a = agg.snapshot("cumulative").report["attribution"]["decode"]
    s = np.concatenate(ss)
    x = s[s["phase"] == 1]
    assert a["clamped"] is True
    assert a["host_ms"] >= 0 and a["host_pct"] >= 0
    assert a["overlap_ms"] == pytest.approx(np.maximum(x["kernel_ns"] - x["dur_ns"], 0).sum() / 1e6)
    assert a["host_ms"] == pytest.approx(np.maximum(x["dur_ns"] - x["kernel_ns"], 0).sum() / 1e6)


def test_token_rate_series_and_window_tokens() -> None:
    names, ks, ss = decode_loop(13, n_layers=2, gens=8, new=60)
    agg = feed(Aggregator(2.0), loop_batches(names, ks, ss, 3))
    snap = agg.snapshot("window")
    s = np.concatenate(ss)
    end = s["start_ns"] + s["dur_ns"]
    gen = np.where(s["phase"] == 1, s["tokens"], s["batch"])
    sec = end // 1_000_000_000
    first = s["start_ns"].min() // 1_000_000_000
    done = sec < end.max() // 1_000_000_000
    want = np.bincount(sec[done] - first, weights=gen[done])
    got = dict(zip(snap.series.tok_s_t.tolist(), snap.series.tok_s.tolist(), strict=True))
    assert got == {float(i): float(v) for i, v in enumerate(want)}
    # window tokens: the steps whose start falls in the last 20 slices
    sl_ns = round(2.0e9 / N_SLICES)
    head = max(int(s["start_ns"].max()), int(np.concatenate(ks)["start_ns"].max())) // sl_ns
    w = s[s["start_ns"] // sl_ns >= head - N_SLICES + 1]
    wd = w[w["phase"] == 1]
    assert snap.report["tokens"]["decode_steps"] == len(wd)
    assert snap.report["tokens"]["decode_tok_s"] == pytest.approx(len(wd) / (wd["dur_ns"].sum() / 1e9))


def test_kernel_detail() -> None:
    names, ks, ss = decode_loop(14, gens=2)
    agg = feed(Aggregator(WINDOW_S), loop_batches(names, ks, ss, 5))
    snap = agg.snapshot("cumulative")
    d = snap.kernel_detail("matmul:down_proj")
    k = np.concatenate(ks)
    m = k["name"] == names.index("matmul:down_proj")
    assert d["count"] == int(m.sum()) == sum(d["histogram"]["counts"])
    assert {(s["m"], s["n"], s["k"]): s["count"] for s in d["shapes"]} == {
        (24, 64, 96): int((m & (k["phase"] == 0)).sum()),
        (1, 64, 96): int((m & (k["phase"] == 1)).sum()),
    }
    by_layer = {r["layer"]: r for r in d["layers"]}
    assert by_layer[2]["ms_per_step"] > 4 * by_layer[0]["ms_per_step"]
    assert by_layer[2]["count"] == int((m & (k["layer"] == 2)).sum())
    assert d["histogram"]["edges_ms"][0] == d["min_ms"] and d["histogram"]["edges_ms"][-1] == pytest.approx(
        d["max_ms"]
    )
    assert d["p50_ms"] <= d["p90_ms"] <= d["p99_ms"] <= d["max_ms"]
    assert snap.kernel_detail("matmul:q_proj")["name"] == "matmul:q_proj"
    with pytest.raises(LlmtopError):
        snap.kernel_detail("nope")
    lay = agg.snapshot("cumulative", group="layer")
    assert lay.kernel_detail("layer 2")["count"] == int((k["layer"] == 2).sum())
    assert agg.snapshot("cumulative", group="op_class").kernel_detail("attention")["count"] == int(
        (k["op_class"] == OP_CLASSES.index("attention")).sum()
    )


def test_dropped_and_collector_cost() -> None:
    now = [100.0]
    agg = Aggregator(WINDOW_S, clock=lambda: now[0])
    agg.note_dropped("engine", 3)
    agg.note_dropped("engine", 4)
    agg.note_dropped("gpu", 1)
    for _ in range(10):
        now[0] += 0.5
        agg.note_cost("engine", 0.45)  # 90 % of a core
        agg.note_cost("process", 0.01)
    r = agg.snapshot().report
    assert r["dropped"] == {"total": 8, "by_collector": {"engine": 7, "gpu": 1}}
    c = r["collectors"]
    assert c["engine"]["cost_s"] == pytest.approx(4.5) and c["engine"]["behind"] is True
    assert c["engine"]["cpu_pct"] == pytest.approx(90.0)
    assert c["process"]["behind"] is False and c["process"]["cpu_pct"] == pytest.approx(2.0)
    for _ in range(10):
        now[0] += 0.5
        agg.note_cost("engine", 0.1)
    c = agg.snapshot().report["collectors"]
    assert c["engine"]["cpu_pct"] == pytest.approx(20.0) and c["engine"]["behind"] is False
    now[0] += 60  # the drops are old news: gpu is no longer behind
    assert agg.snapshot().report["collectors"]["gpu"]["behind"] is False


def test_real_recorder_batches(no_coalesce: None) -> None:
    """Batches drained from the real KernelRecorder (the engine's path) fold correctly."""
    rec = KernelRecorder(NameTable())
    agg = Aggregator(WINDOW_S)
    for step in range(12):
        rec.begin_step(0 if step == 0 else 1, step, 8 if step == 0 else 1, 1, 8 + step)
        for layer in range(3):
            for n in ("matmul:q_proj", "attention:prefill" if step == 0 else "attention:decode"):
                nid, oc = rec.ids[n]
                rec.add(nid, oc, layer, T0 + step * 10_000_000 + layer * 1000, 5000 + 10 * step, 1, 64, 64)
        rec.end_step()
        if step % 4 == 3:
            batch = rec.drain()
            assert batch is not None
            agg.ingest(batch)
    r = agg.snapshot("cumulative").report
    assert r["tokens"]["decode_steps"] == 11 and r["tokens"]["prefills"] == 1
    assert {row["name"]: row["count"] for row in r["kernels"]} == {
        "matmul:q_proj": 36,
        "attention:decode": 33,
        "attention:prefill": 3,
    }
    assert [row["layer"] for row in r["layers"]] == [0, 1, 2]
    assert r["attention"]["steps"] == 11


def test_batched_steps_count_tokens_once() -> None:
    """A step's `tokens` is the batch total: generated = decode tokens + one per sequence per prefill."""
    names, ks, ss = decode_loop(15, n_layers=2, gens=2, new=10, batch=3)
    agg = feed(Aggregator(WINDOW_S), loop_batches(names, ks, ss, 4))
    tok = agg.snapshot("cumulative").report["tokens"]
    s = np.concatenate(ss)
    pre, dec = s[s["phase"] == 0], s[s["phase"] == 1]
    assert tok["generated"] == int(dec["tokens"].sum() + pre["batch"].sum()) == 2 * (3 * 10 + 3)
    assert tok["prompt_tokens"] == int(pre["tokens"].sum()) == 2 * 24 * 3
    assert tok["decode_tok_s"] == pytest.approx(dec["tokens"].sum() / (dec["dur_ns"].sum() / 1e9))
    assert tok["prefill_tok_s"] == pytest.approx(pre["tokens"].sum() / (pre["dur_ns"].sum() / 1e9))


def test_coalesced_small_batches_give_the_same_report(monkeypatch: pytest.MonkeyPatch) -> None:
    names, ks, ss = decode_loop(16, gens=4, new=50)
    batches = loop_batches(names, ks, ss, 1)
    monkeypatch.setattr(aggregator_mod, "COALESCE", 1)
    each = feed(Aggregator(WINDOW_S), batches)
    monkeypatch.setattr(aggregator_mod, "COALESCE", 8192)
    coalesced = Aggregator(WINDOW_S)
    for i, b in enumerate(batches):
        coalesced.ingest(b)
        if i % 37 == 0:
            coalesced.snapshot()  # a snapshot folds whatever is pending
    assert coalesced._pend_n > 0  # the tail is still pending until the next snapshot
    for mode in ("window", "cumulative"):
        a, b = each.snapshot(mode).report, coalesced.snapshot(mode).report
        a.pop("collectors"), b.pop("collectors")
        assert a["kernels"] == b["kernels"] and a["layers"] == b["layers"] and a["tokens"] == b["tokens"]
        assert a["trend"] == b["trend"]
        assert a["attention"]["steps"] == b["attention"]["steps"]
        assert a["attention"]["slope_us_per_1k"] == pytest.approx(b["attention"]["slope_us_per_1k"], rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "note"),
    [
        ({"prompt": 45, "new": 30, "attn": (2e4, 40.0, 0.0)}, "context range too narrow"),
        ({"prompt": 100, "new": 320, "attn": (2e4, -40.0, 0.0)}, "no growth detectable above noise"),
        ({"prompt": 100, "new": 4, "attn": (2e4, 40.0, 0.0)}, "decode steps"),
    ],
)
def test_attention_projection_needs_a_fit_that_carries_it(kwargs: dict, note: str) -> None:
    """A narrow context range, no growth or too few steps: no projection numbers, a note why."""
    names, ks, ss = decode_loop(11, gens=1, **kwargs)
    agg = Aggregator(WINDOW_S)
    agg.set_source(SourceInfo(kind="live", max_context=8192))
    att = feed(agg, loop_batches(names, ks, ss, 4)).snapshot("cumulative").report["attention"]
    assert att["fit_ok"] is False
    assert note in att["fit_note"]
    assert att["projection"]["ctx"] == 8192
    assert att["projection"]["attention_ms"] is None and att["projection"]["pct_of_step"] is None


def test_attention_projection_when_the_fit_is_good() -> None:
    names, ks, ss = decode_loop(12, gens=1, prompt=100, new=320)
    agg = Aggregator(WINDOW_S)
    agg.set_source(SourceInfo(kind="live", max_context=8192))
    att = feed(agg, loop_batches(names, ks, ss, 4)).snapshot("cumulative").report["attention"]
    assert att["fit_ok"] is True and att["fit_note"] is None
    assert att["projection"]["pct_of_step"] is not None


def test_no_curvature_is_claimed_over_a_narrow_context_range() -> None:
    """Strongly quadratic attention over 150 tokens of context: the quadratic term is fitted (and
    reported), but `superlinear` needs the range the linear fit needs (FIT_RULE), as the pane shows it."""
    names, ks, ss = decode_loop(
        10, n_layers=2, gens=1, prompt=24, new=150, attn=(2e4, 5.0, 2.0), slow_layer=None
    )
    agg = feed(Aggregator(WINDOW_S), loop_batches(names, ks, ss, 3))
    att = agg.snapshot("cumulative").report["attention"]
    assert att["ctx_max"] - att["ctx_min"] < 256 and not att["fit_ok"]
    assert att["quadratic"] is not None and att["quadratic"]["c_us_per_1k2"] > 0
    assert att["superlinear"] is False
