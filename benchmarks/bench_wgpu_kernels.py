"""wgpu backend kernel benchmarks, timed with the backend's own GPU timestamps.

1. GEMV achieved bandwidth (weight bytes / kernel time) at SmolLM2-135M and Llama-3.2-1B shapes, against
   the adapter's copy_buffer_to_buffer bandwidth measured in the same run (copied bytes / time).
2. Decode attention time against context length (up to 4k): least-squares slope and R².

Usage: .venv/bin/python benchmarks/bench_wgpu_kernels.py [--reps 5] [--max-ctx 4096] [--skip-attention]
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from llmtop.events import DECODE
from llmtop.kernels.base import KernelRecorder
from llmtop.kernels.wgpu_backend import WgpuOps
from llmtop.model.config import ModelConfig

SHAPES = [  # (model, projection, N, K)
    ("SmolLM2-135M", "q_proj/o_proj", 576, 576),
    ("SmolLM2-135M", "k_proj/v_proj", 192, 576),
    ("SmolLM2-135M", "gate/up_proj", 1536, 576),
    ("SmolLM2-135M", "down_proj", 576, 1536),
    ("SmolLM2-135M", "lm_head", 49152, 576),
    ("Llama-3.2-1B", "q_proj/o_proj", 2048, 2048),
    ("Llama-3.2-1B", "k_proj/v_proj", 512, 2048),
    ("Llama-3.2-1B", "gate/up_proj", 8192, 2048),
    ("Llama-3.2-1B", "down_proj", 2048, 8192),
]


def _kernel_ns(ops: WgpuOps, name: str) -> np.ndarray:
    batch = ops.recorder.drain()
    nid = ops.recorder.ids[name][0]
    return batch.kernels["dur_ns"][batch.kernels["name"] == nid].astype(np.float64)


def _timed(ops: WgpuOps, fn, name: str, reps: int) -> float:
    """Median GPU ns of `reps` calls, each its own recorder step (resolved once per step)."""
    fn()  # warm-up: pipeline compile, pool and bind-group creation
    ops.synchronize()
    ops.recorder.drain()
    for i in range(reps):
        ops.recorder.begin_step(DECODE, i, 1, 1, 1)
        fn()
        ops.recorder.end_step()
    return float(np.median(_kernel_ns(ops, name)))


def copy_bandwidth(ops: WgpuOps, nbytes: int, reps: int) -> float:
    """Bytes/s of copy_buffer_to_buffer between two device buffers, timed by encoder timestamps."""
    from wgpu.backends.wgpu_native import extras

    if "timestamp-query-inside-encoders" not in ops.features:
        raise SystemExit("adapter lacks timestamp-query-inside-encoders: cannot time buffer copies")
    U = ops._U
    src = ops.device.create_buffer(size=nbytes, usage=U.COPY_SRC | U.COPY_DST)
    dst = ops.device.create_buffer(size=nbytes, usage=U.COPY_DST)
    qs = ops.device.create_query_set(type="timestamp", count=2 * reps)
    res = ops.device.create_buffer(size=16 * reps, usage=U.QUERY_RESOLVE | U.COPY_SRC)
    rb = ops.device.create_buffer(size=16 * reps, usage=U.MAP_READ | U.COPY_DST)
    enc = ops.device.create_command_encoder()
    enc.copy_buffer_to_buffer(src, 0, dst, 0, nbytes)  # warm-up (first-touch page faults)
    for r in range(reps):
        extras.write_timestamp(enc, qs, 2 * r)
        enc.copy_buffer_to_buffer(src, 0, dst, 0, nbytes)
        extras.write_timestamp(enc, qs, 2 * r + 1)
    enc.resolve_query_set(qs, 0, 2 * reps, res, 0)
    enc.copy_buffer_to_buffer(res, 0, rb, 0, 16 * reps)
    ops.queue.submit([enc.finish()])
    rb.map_sync("read")
    ts = np.frombuffer(rb.read_mapped(), np.uint64).astype(np.float64)
    rb.unmap()
    dt = np.median(ts[1::2] - ts[0::2]) * ops.tick_ns
    return nbytes / dt * 1e9


def bench_gemv(ops: WgpuOps, reps: int) -> None:
    copy_bw = copy_bandwidth(ops, 64 << 20, reps)
    print(f"Adapter: {ops.device_name}; timing: {ops.timing}; dtype {ops.dtype_name}\n")
    print(f"copy_buffer_to_buffer 64 MiB: **{copy_bw / 1e9:.2f} GB/s** (copied bytes / time)\n")
    print("| model | projection | N x K | weight MiB | GEMV µs (median) | GB/s | % of copy |")
    print("|---|---|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    cfg = ModelConfig("bench", 8, 64, 64, 1, 1, 1, 64, 64)
    for model, proj, n, k in SHAPES:
        w = rng.standard_normal((n, k), dtype=np.float32)
        h = ops.load_weights(cfg, {"w": w})["w"]
        x = ops.upload(rng.standard_normal((1, 1, k), dtype=np.float32))
        ns = _timed(ops, lambda h=h, x=x: ops.linear(x, h, None, name="matmul:q_proj", layer=0),
                    "matmul:q_proj", reps)
        wbytes = n * k * ops._esize
        bw = wbytes / ns * 1e9
        print(f"| {model} | {proj} | {n} x {k} | {wbytes / 2**20:.1f} | {ns / 1e3:.0f} | {bw / 1e9:.2f} "
              f"| {100 * bw / copy_bw:.0f}% |")
        del h
    print()


def bench_attention(ops: WgpuOps, reps: int, max_ctx: int) -> None:
    cfg = ModelConfig("smol-shapes", 8, 576, 1536, 1, 9, 3, 64, max_ctx)
    ops.load_weights(cfg, {})
    ops.alloc_kv_cache(1, max_ctx)
    rng = np.random.default_rng(1)
    q = ops.upload(rng.standard_normal((1, 1, cfg.q_dim), dtype=np.float32))
    ctxs = [c for c in (64, 256, 512, 1024, 1536, 2048, 2560, 3072, 3584, 4096) if c <= max_ctx]
    ops.attention(q, np.array([[0]], np.int32), layer=0, phase=DECODE)  # creates its pooled output/params
    ops.synchronize()
    n_buf = ops.n_buffers
    times = []
    for c in ctxs:
        pos = np.array([[c - 1]], np.int32)
        times.append(_timed(ops, lambda pos=pos: ops.attention(q, pos, layer=0, phase=DECODE),
                            "attention:decode", reps))
    grew = ops.n_buffers - n_buf
    t = np.array(times) / 1e3
    x = np.array(ctxs, dtype=np.float64)
    slope, icpt = np.polyfit(x, t, 1)
    r2 = 1 - ((t - (slope * x + icpt)) ** 2).sum() / ((t - t.mean()) ** 2).sum()
    print(f"Decode attention, SmolLM2 shapes (9 q / 3 kv heads, hd 64), batch 1, {ops.dtype_name}:\n")
    print("| context | µs (median) |")
    print("|---:|---:|")
    for c, v in zip(ctxs, t, strict=True):
        print(f"| {c} | {v:.0f} |")
    print(f"\nlinear fit: **{slope * 1e3:.1f} µs per 1k tokens** + {icpt:.0f} µs, **R² = {r2:.4f}**; "
          f"GPU buffers created across all context lengths after setup: {grew}\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-ctx", type=int, default=4096)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skip-attention", action="store_true")
    ap.add_argument("--skip-gemv", action="store_true")
    a = ap.parse_args()
    print(f"`{' '.join([sys.executable.split('/')[-1], *sys.argv])}` ({time.strftime('%Y-%m-%d %H:%M')})\n")
    ops = WgpuOps(KernelRecorder(), a.dtype)
    if not a.skip_gemv:
        bench_gemv(ops, a.reps)
    if not a.skip_attention:
        bench_attention(ops, a.reps, a.max_ctx)
    ops.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
