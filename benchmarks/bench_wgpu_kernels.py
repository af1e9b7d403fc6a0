"""wgpu backend kernel benchmarks, timed with the backend's own GPU timestamps.

1. GEMV achieved bandwidth (weight bytes / kernel time) at SmolLM2-135M and Llama-3.2-1B shapes, against
   the adapter's copy_buffer_to_buffer bandwidth measured in the same run (copied bytes / time).
2. Decode attention time against context length (up to 4k): least-squares slope and R².
3. --variants: the experiment behind linear.wgsl's design — GEMV/streaming-read shader variants at one
   shape (storage-buffer vs texture weights, x as storage vs uniform, workgroup shapes, f16 and packed
   weights), each as GB/s of bytes actually read vs copy_buffer_to_buffer, all timed in the same run.
   LP_NUM_THREADS (lavapipe's worker threads) must be set in the environment: run twice to compare.

Usage: .venv/bin/python benchmarks/bench_wgpu_kernels.py [--reps 5] [--max-ctx 4096] [--skip-attention]
       [--variants [--n 4096 --k 2048]]
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from llmtop.events import DECODE
from llmtop.kernels.base import KernelRecorder
from llmtop.kernels.wgpu_backend import WgpuOps, WTensor
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


def encoder_timed(ops: WgpuOps, encode: Callable[[object], None], reps: int) -> float:
    """Median ns of `encode(encoder)`, bracketed by encoder-level timestamps (one warm-up call first)."""
    from wgpu.backends.wgpu_native import extras

    if "timestamp-query-inside-encoders" not in ops.features:
        raise SystemExit("adapter lacks timestamp-query-inside-encoders: cannot time buffer copies")
    U = ops._U
    qs = ops.device.create_query_set(type="timestamp", count=2 * reps)
    res = ops.device.create_buffer(size=16 * reps, usage=U.QUERY_RESOLVE | U.COPY_SRC)
    rb = ops.device.create_buffer(size=16 * reps, usage=U.MAP_READ | U.COPY_DST)
    enc = ops.device.create_command_encoder()
    encode(enc)  # warm-up (first-touch page faults)
    for r in range(reps):
        extras.write_timestamp(enc, qs, 2 * r)
        encode(enc)
        extras.write_timestamp(enc, qs, 2 * r + 1)
    enc.resolve_query_set(qs, 0, 2 * reps, res, 0)
    enc.copy_buffer_to_buffer(res, 0, rb, 0, 16 * reps)
    ops.queue.submit([enc.finish()])
    rb.map_sync("read")
    ts = np.frombuffer(rb.read_mapped(), np.uint64).astype(np.float64)
    rb.unmap()
    return float(np.median(ts[1::2] - ts[0::2]) * ops.tick_ns)


def copy_bandwidth(ops: WgpuOps, nbytes: int, reps: int) -> float:
    """Bytes/s of copy_buffer_to_buffer between two device buffers (copied bytes / time)."""
    U = ops._U
    src = ops.device.create_buffer(size=nbytes, usage=U.COPY_SRC | U.COPY_DST)
    dst = ops.device.create_buffer(size=nbytes, usage=U.COPY_DST)
    return nbytes / encoder_timed(ops, lambda e: e.copy_buffer_to_buffer(src, 0, dst, 0, nbytes), reps) * 1e9


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


# -- --variants: the GEMV design experiment --------------------------------------------------------
def _gemv_src(w_decl: str, x_uniform: bool, k4: int, body: str, wg: int, reduce_rows: int = 0,
              store: str = " Y[n] = dot(a0, vec4<f32>(1.0));") -> str:
    """One-off GEMV shader: `body` accumulates into a0..; reduce_rows > 0 adds a workgroup tree reduction."""
    x_decl = (f"@group(0) @binding(1) var<uniform> X: array<vec4<f32>, {k4}>;" if x_uniform
              else "@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;")
    head = (f"const K4: u32 = {k4}u;\nconst WG: u32 = {wg}u;\n{w_decl}\n{x_decl}\n"
            "@group(0) @binding(2) var<storage, read_write> Y: array<f32>;\n")
    if not reduce_rows:
        return head + (f"@compute @workgroup_size({wg})\n"
                       "fn main(@builtin(global_invocation_id) g: vec3<u32>) {\n let n = g.x;\n"
                       " var a0 = vec4<f32>(0.0);\n" + body + "\n" + store + "\n}")
    r = reduce_rows
    accs = "".join(f" var a{i} = vec4<f32>(0.0);\n" for i in range(r))
    st = "".join(f" red[{i}u * WG + lid] = a{i};\n" for i in range(r))
    return head + (
        f"var<workgroup> red: array<vec4<f32>, {r * wg}>;\n@compute @workgroup_size({wg})\n"
        "fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {\n"
        f" let n0 = wid.x * {r}u;\n{accs}{body}\n{st} workgroupBarrier();\n"
        " for (var off = WG / 2u; off > 0u; off >>= 1u) {\n"
        f"  if (lid < off) {{ for (var r = 0u; r < {r}u; r++) {{\n"
        "   red[r * WG + lid] += red[r * WG + lid + off]; } }\n"
        "  workgroupBarrier();\n }\n"
        f" if (lid < {r}u) {{ Y[n0 + lid] = dot(red[lid * WG], vec4<f32>(1.0)); }}\n}}")


def bench_variants(ops: WgpuOps, reps: int, n: int, k: int) -> None:
    import wgpu

    dev, U, TU = ops.device, ops._U, wgpu.TextureUsage
    k4 = k // 4
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k), dtype=np.float32)
    x = rng.standard_normal(k, dtype=np.float32)
    ref = w.astype(np.float64) @ x
    w_buf = dev.create_buffer_with_data(data=w, usage=U.STORAGE)
    x_st = dev.create_buffer_with_data(data=x, usage=U.STORAGE)
    x_un = dev.create_buffer_with_data(data=x, usage=U.UNIFORM)
    y = dev.create_buffer(size=n * 4, usage=U.STORAGE | U.COPY_SRC)

    def texture(fmt: str, data: np.ndarray, width: int) -> object:
        t = dev.create_texture(size=(width, n, 1), format=fmt, usage=TU.TEXTURE_BINDING | TU.COPY_DST)
        layout = {"bytes_per_row": data.nbytes // n, "rows_per_image": n}
        dev.queue.write_texture({"texture": t}, data, layout, (width, n, 1))
        return t.create_view()

    q8 = np.clip(np.round(w / np.abs(w).max(axis=1, keepdims=True) * 127), -127, 127).astype(np.int8)
    tex = {"f32": texture("rgba32float", w, k4), "f16": texture("rgba16float", w.astype(np.float16), k4),
           "f16x8": texture("rgba32uint", w.astype(np.float16), k // 8),
           "q8x16": texture("rgba32uint", q8, k // 16)}
    sb = "@group(0) @binding(0) var<storage, read> W: array<vec4<f32>>;"
    tf = "@group(0) @binding(0) var W: texture_2d<f32>;"
    tu = "@group(0) @binding(0) var W: texture_2d<u32>;"
    ld = "textureLoad(W, vec2<u32>(i, n), 0)"
    unpack_f16 = (f"let t = {ld}; a0 += vec4<f32>(unpack2x16float(t.x), unpack2x16float(t.y)) * X[2u * i]"
                  " + vec4<f32>(unpack2x16float(t.z), unpack2x16float(t.w)) * X[2u * i + 1u];")
    unpack_q8 = (f"let t = {ld}; a0 += unpack4x8snorm(t.x) * X[4u * i] + unpack4x8snorm(t.y) * X[4u * i + 1u]"
                 " + unpack4x8snorm(t.z) * X[4u * i + 2u] + unpack4x8snorm(t.w) * X[4u * i + 3u];")
    # (label, source, weight binding, x binding, workgroups, bytes read per call, computes w @ x?)
    cases: list[tuple[str, str, object, object, int, int, str]] = []
    for wg, r, xu in [(64, 1, False), (64, 1, True), (64, 4, False), (64, 4, True), (256, 4, True)]:
        body = " for (var i = lid; i < K4; i += WG) { let xv = X[i]; " + " ".join(
            f"a{j} += W[(n0 + {j}u) * K4 + i] * xv;" for j in range(r)) + " }"
        label = f"storage W, coalesced over K, wg {wg}, {r} rows/wg, x {'uniform' if xu else 'storage'}"
        cases.append((label, _gemv_src(sb, xu, k4, body, wg, r), w_buf, x_un if xu else x_st, n // r,
                      n * k * 4, "f32"))
    row = " for (var i = 0u; i < K4; i++) { a0 += W[n * K4 + i] * X[i]; }"
    cases.append(("storage W, row per invocation, wg 16, x uniform", _gemv_src(sb, True, k4, row, 16), w_buf,
                  x_un, n // 16, n * k * 4, "f32"))
    body = " for (var i = lid; i < K4; i += WG) { a0 += textureLoad(W, vec2<u32>(i, n0), 0) * X[i]; }"
    cases.append(("texture W, coalesced over K, wg 64, 1 row/wg, x uniform",
                  _gemv_src(tf, True, k4, body, 64, 1), tex["f32"], x_un, n, n * k * 4, "f32"))
    row_t = f" for (var i = 0u; i < K4; i++) {{ a0 += {ld} * X[i]; }}"
    for wg in (8, 16, 32, 64):
        cases.append((f"texture W, row per invocation, wg {wg}, x uniform",
                      _gemv_src(tf, True, k4, row_t, wg), tex["f32"], x_un, n // wg, n * k * 4, "f32"))
    two = (" var a1 = vec4<f32>(0.0);\n for (var i = 0u; i < K4; i++) { let xv = X[i];"
           " a0 += textureLoad(W, vec2<u32>(i, 2u * n), 0) * xv;"
           " a1 += textureLoad(W, vec2<u32>(i, 2u * n + 1u), 0) * xv; }")
    cases.append(("texture W, 2 rows per invocation, wg 16, x uniform (= linear.wgsl decode)",
                  _gemv_src(tf, True, k4, two, 16, store=" Y[2u * n] = dot(a0, vec4<f32>(1.0));"
                            " Y[2u * n + 1u] = dot(a1, vec4<f32>(1.0));"),
                  tex["f32"], x_un, n // 32, n * k * 4, "f32"))
    cases.append(("texture W, row per invocation, wg 16, x storage", _gemv_src(tf, False, k4, row_t, 16),
                  tex["f32"], x_st, n // 16, n * k * 4, "f32"))
    cases.append(("texture rgba16float W (f16), row per invocation, wg 16",
                  _gemv_src(tf, True, k4, row_t, 16), tex["f16"], x_un, n // 16, n * k * 2, "f16"))
    cases.append(("texture rgba32uint W (8 packed f16/texel), wg 16",
                  _gemv_src(tu, True, k4, f" for (var i = 0u; i < K4 / 2u; i++) {{ {unpack_f16} }}", 16),
                  tex["f16x8"], x_un, n // 16, n * k * 2, "f16"))
    cases.append(("texture rgba32uint W (16 packed int8/texel), wg 16",
                  _gemv_src(tu, True, k4, f" for (var i = 0u; i < K4 / 4u; i++) {{ {unpack_q8} }}", 16),
                  tex["q8x16"], x_un, n // 16, n * k, "q8"))
    # Pure streaming reads (no x, no math beyond a running sum): the ceiling of each load path.
    # (one read of X keeps the binding layout identical to the GEMV cases)
    stream_sb = " for (var i = lid; i < K4; i += WG) { a0 += W[n0 * K4 + i]; } a0 *= X[0].x;"
    cases.append(("pure streaming read: storage W, coalesced, wg 64",
                  _gemv_src(sb, True, k4, stream_sb, 64, 1), w_buf, x_un, n, n * k * 4, ""))
    cases.append(("pure streaming read: texture W, row per invocation, wg 16",
                  _gemv_src(tf, True, k4, f" for (var i = 0u; i < K4; i++) {{ a0 += {ld}; }}"
                            " a0 *= X[0].x;", 16),
                  tex["f32"], x_un, n // 16, n * k * 4, ""))

    # Interleaved rounds: every variant (and the copy) is timed once per round and the table reports the
    # median over rounds, so load from other processes drifting over the run biases no variant.
    src_buf = dev.create_buffer(size=n * k * 4, usage=U.COPY_SRC | U.COPY_DST)
    dst_buf = dev.create_buffer(size=n * k * 4, usage=U.COPY_DST)
    ref_q8 = (q8.astype(np.float64) / 127) @ x
    encoders, errs = [], []
    for _label, src, wbind, xbind, n_wg, _nbytes, kind in cases:
        pl = dev.create_compute_pipeline(layout="auto", compute={
            "module": dev.create_shader_module(code=src), "entry_point": "main"})
        w_res = wbind if isinstance(wbind, wgpu.GPUTextureView) else {"buffer": wbind, "offset": 0,
                                                                      "size": wbind.size}
        entries = [{"binding": 0, "resource": w_res},
                   {"binding": 1, "resource": {"buffer": xbind, "offset": 0, "size": xbind.size}},
                   {"binding": 2, "resource": {"buffer": y, "offset": 0, "size": y.size}}]
        bg = dev.create_bind_group(layout=pl.get_bind_group_layout(0), entries=entries)

        def encode(e: object, pl: object = pl, bg: object = bg, n_wg: int = n_wg) -> None:
            cp = e.begin_compute_pass()
            cp.set_pipeline(pl)
            cp.set_bind_group(0, bg)
            cp.dispatch_workgroups(n_wg)
            cp.end()

        encoders.append(encode)
        encode_once = dev.create_command_encoder()
        encode(encode_once)
        dev.queue.submit([encode_once.finish()])
        err = "—"
        if kind:
            got = ops.to_host(WTensor(y, (n,))).astype(np.float64)
            want = ref_q8 if kind == "q8" else ref
            err = f"{np.abs(got - want).max() / np.abs(want).max():.1e}"
        errs.append(err)
    times = np.zeros((reps, len(cases)))
    copy_ns = np.zeros(reps)
    def copy(e: object) -> None:
        e.copy_buffer_to_buffer(src_buf, 0, dst_buf, 0, src_buf.size)

    for r in range(reps):
        copy_ns[r] = encoder_timed(ops, copy, 1)
        for c, encode in enumerate(encoders):
            times[r, c] = encoder_timed(ops, encode, 1)
    copy_bw = n * k * 4 / np.median(copy_ns) * 1e9
    threads = os.environ.get("LP_NUM_THREADS", "default")
    print(f"GEMV design variants, N x K = {n} x {k}, LP_NUM_THREADS={threads}, median over {reps} "
          f"interleaved rounds of GPU-timestamped calls; copy_buffer_to_buffer of the f32 weight size: "
          f"**{copy_bw / 1e9:.2f} GB/s**\n")
    print("| variant | µs | GB/s of bytes read | % of copy | f32-equivalent GB/s | max rel err |")
    print("|---|---:|---:|---:|---:|---:|")
    for (label, *_rest, nbytes, _kind), ns, err in zip(cases, np.median(times, axis=0), errs, strict=True):
        bw = nbytes / ns * 1e9
        print(f"| {label} | {ns / 1e3:.0f} | {bw / 1e9:.2f} | {100 * bw / copy_bw:.0f}% | "
              f"{n * k * 4 / ns:.2f} | {err} |")
    print()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-ctx", type=int, default=4096)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skip-attention", action="store_true")
    ap.add_argument("--skip-gemv", action="store_true")
    ap.add_argument("--variants", action="store_true", help="only the GEMV design experiment")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=2048)
    a = ap.parse_args()
    print(f"`{' '.join([sys.executable.split('/')[-1], *sys.argv])}` ({time.strftime('%Y-%m-%d %H:%M')})\n")
    ops = WgpuOps(KernelRecorder(), a.dtype)
    if a.variants:
        bench_variants(ops, a.reps, a.n, a.k)
        ops.close()
        return 0
    if not a.skip_gemv:
        bench_gemv(ops, a.reps)
    if not a.skip_attention:
        bench_attention(ops, a.reps, a.max_ctx)
    ops.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
