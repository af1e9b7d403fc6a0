"""Roofline columns and device peaks (stats/roofline.py, kernels/peaks.py): bytes and flops of the built-in
matmuls against hand-computed values, rates against bytes / mean time, the CPU probe against numpy, the GPU
tables, `--peak`, and a Kineto trace's deviceProperties."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from fixture_paths import HTA_A100

from llmtop.kernels.base import KernelRecorder
from llmtop.kernels.peaks import gpu_peak_from_properties, known_gpu_peak, parse_peak, probe_cpu
from llmtop.kernels.torch_backend import TorchOps
from llmtop.model.config import ModelConfig
from llmtop.model.engine import Engine
from llmtop.model.loader import LoadedModel
from llmtop.model.presets import random_weights
from llmtop.stats.aggregator import Aggregator
from llmtop.stats.roofline import ROOFLINE_KEYS, elem_bytes

LLMTOP = [sys.executable, "-m", "llmtop"]


def _tiny() -> LoadedModel:
    cfg = ModelConfig(name="tiny", vocab_size=97, hidden_size=64, intermediate_size=96, n_layers=2, n_heads=4,
                      n_kv_heads=2, head_dim=16, max_context=512, rms_eps=1e-5, rope_theta=1e4)
    return LoadedModel(cfg, random_weights(cfg), None, "preset:tiny", True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_bytes_and_flops_are_the_shapes(dtype: str) -> None:
    lm = _tiny()
    cfg = lm.config
    ops = TorchOps(KernelRecorder(), device="cpu", dtype=dtype)
    ops.set_peak({"bw_gbps": 20.0, "flops_gflops": 400.0, "dtype": dtype, "source": "test"})
    eng = Engine(lm, ops, max_batch=2)
    agg = Aggregator()
    agg.set_source(eng.source_info())
    eng.eos_ids = frozenset()  # every row decodes all 6 steps
    eng.generate([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18]], 6, chat=False)
    agg.ingest(ops.recorder.drain())
    e = 4 if dtype == "float32" else 2
    hd, d, f = cfg.head_dim, cfg.hidden_size, cfg.intermediate_size
    kv = cfg.n_kv_heads * hd
    nk = {"q_proj": (cfg.n_heads * hd, d), "k_proj": (kv, d), "v_proj": (kv, d),
          "o_proj": (d, cfg.n_heads * hd), "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f),
          "lm_head": (cfg.vocab_size, d)}
    rep = agg.snapshot(mode="cumulative", group="kernel", filter="phase:decode").report
    rows = {r["name"]: r for r in rep["kernels"]}
    assert rep["device_peak"]["source"] == "test"
    for name, (n, k) in nk.items():
        r = rows[f"matmul:{name}"]
        m = 2  # batch 2: one token per sequence per decode step
        assert r["bytes"] == pytest.approx(e * (n * k + m * k + m * n)) and r["flops"] == 2 * m * n * k
        mean_ns = r["mean_ms"] * 1e6
        assert r["gbps"] == pytest.approx(r["bytes"] / mean_ns, rel=1e-9)  # bytes per ns = GB/s
        assert r["gflops"] == pytest.approx(r["flops"] / mean_ns, rel=1e-9)
        assert r["pct_peak_bw"] == pytest.approx(100 * r["gbps"] / 20.0)
        # a decode GEMV moves ~e bytes per 2 flops: intensity ~1 flop/byte, far below the 20 ridge
        assert r["bound"] == "memory"
    for r in rows.values():
        if not r["name"].startswith("matmul:"):
            assert all(r[k] is None for k in ROOFLINE_KEYS), r
    pre = {r["name"]: r for r in agg.snapshot(mode="cumulative", filter="phase:prefill").report["kernels"]}
    n, k = nk["gate_proj"]
    m = 14  # two prompts of 7 tokens
    assert pre["matmul:gate_proj"]["flops"] == 2 * m * n * k
    ops.close()


def test_compute_bound_when_intensity_passes_the_ridge() -> None:
    from llmtop.stats.roofline import roofline_columns

    src = {"dtype": "float32", "extra": {"device_peak": {"bw_gbps": 100, "flops_gflops": 1000}}}
    big = 1024  # a square 1024^3 matmul: 2 n^3 / (12 n^2) = n/6 ~ 171 flop/byte > ridge 10
    el, fl = np.array([3.0 * big * big]), np.array([2.0 * big**3])
    (row,) = roofline_columns(el, fl, np.array([1e6]), np.array([1]), src)
    assert row["bound"] == "compute" and row["bytes"] == 12 * big * big
    (none,) = roofline_columns(el, fl, np.array([1e6]), np.array([1]), {"dtype": "float32"})
    assert none["bound"] is None and none["pct_peak_bw"] is None and none["gbps"] is not None
    assert elem_bytes("torch.bfloat16") == 2 and elem_bytes("float32 (TF32)") == 4 and elem_bytes("?") is None


def test_cpu_probe_agrees_with_numpy() -> None:
    """The probe's bandwidth and matmul rate land in the range a second method gives: a numpy copy (one
    thread, 2 N e bytes) and numpy's BLAS matmul."""
    t0 = time.perf_counter()
    p = probe_cpu("float32")
    assert time.perf_counter() - t0 < 6.0  # budgeted to ~2 s; a loaded machine may stretch it
    a = np.ones(1 << 23, np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    np_bw = 2 * a.nbytes / best / 1e9
    assert 0.3 * np_bw <= p["bw_gbps"] <= 6 * np_bw, (p, np_bw)
    x = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    mm = min(_timed(lambda: x @ x) for _ in range(5))
    np_fl = 2 * 512**3 / mm / 1e9
    assert 0.2 * np_fl <= p["flops_gflops"] <= 8 * np_fl, (p, np_fl)
    assert p["source"] == "measured" and p["dtype"] == "float32"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def test_gpu_peaks_from_the_table_and_from_properties() -> None:
    h = known_gpu_peak("NVIDIA H100 80GB HBM3", "bfloat16")
    assert h["bw_gbps"] == 3350 and h["flops_gflops"] == 989_400
    assert known_gpu_peak("NVIDIA H100 PCIe", "bfloat16")["bw_gbps"] == 2000
    assert known_gpu_peak("NVIDIA A100-SXM4-80GB", "float32", tf32=True)["flops_gflops"] == 156_000
    assert known_gpu_peak("NVIDIA A100-SXM4-80GB", "float32")["flops_gflops"] == 19_500
    assert known_gpu_peak("Tesla T4", "bfloat16")["flops_gflops"] == 8_100  # no bf16 tensor path: fp32
    assert known_gpu_peak("Some Future GPU", "bfloat16") is None
    # an A100 40GB from its own numbers: 108 SMs at 1410 MHz, HBM2 at 1215 MHz on a 5120-bit bus
    a = gpu_peak_from_properties(108, 1410, 1215, 5120, (8, 0), "bfloat16")
    assert a["bw_gbps"] == pytest.approx(1555.2) and a["flops_gflops"] == pytest.approx(311_869, rel=1e-3)
    assert gpu_peak_from_properties(108, 1410, 1215, 5120, (1, 0), "bfloat16") is None


def test_peak_flag_and_its_errors(tmp_path) -> None:
    assert parse_peak("20, 400", "float32") == {"bw_gbps": 20.0, "flops_gflops": 400.0, "dtype": "float32",
                                                 "source": "--peak"}
    r = subprocess.run([*LLMTOP, "report", str(HTA_A100), "--format", "json", "--peak", "10,100"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["device_peak"]["source"] == "--peak"
    for bad in ("abc", "1", "-1,5", "1,2,3", "nan,4"):
        r = subprocess.run([*LLMTOP, "--once", "--peak", bad], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and r.stderr.startswith("llmtop: error:") and len(r.stderr.splitlines()) == 1


def test_a_kineto_traces_device_properties_give_the_peak() -> None:
    r = subprocess.run([*LLMTOP, "report", str(HTA_A100), "--format", "json"], capture_output=True, text=True,
                       timeout=120)
    pk = json.loads(r.stdout)["device_peak"]
    assert pk["bw_gbps"] == 1555 and "deviceProperties" in pk["source"] and "assumed" in pk["source"]


def test_once_json_has_roofline_keys_on_every_matmul_row() -> None:
    r = subprocess.run([*LLMTOP, "--once", "--max-new-tokens", "4", "--format", "json", "--peak", "30,200"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    want = {"bw_gbps": 30.0, "flops_gflops": 200.0, "dtype": "float32", "source": "--peak"}
    assert rep["device_peak"] == want
    mm = [k for k in rep["kernels"] if k["op_class"] == "matmul"]
    assert mm and all(k[key] is not None for k in mm for key in ROOFLINE_KEYS)
