"""wgpu backend kernel benchmarks, timed with the backend's own GPU timestamps.

1. GEMV achieved bandwidth (weight bytes / kernel time) at SmolLM2-135M and Llama-3.2-1B shapes, against
   the adapter's copy_buffer_to_buffer bandwidth measured in the same run (copied bytes / time), in
   interleaved rounds, plus the fixed cost of one dispatch.
2. Decode attention time against context length (up to 4k): least-squares slope and R².
3. --variants: the experiment behind linear.wgsl's design — GEMV/streaming-read shader variants at one
   shape (storage-buffer vs sampled-texture vs read-only storage-texture weights, x as storage vs uniform,
   one row vs 8 interleaved rows per texture row, row groups per invocation, K unrolling, workgroup sizes,
   f16 and packed weights, an empty dispatch), each as GB/s of bytes actually read vs
   copy_buffer_to_buffer, all timed in the same run.
   The backend sets LP_NUM_THREADS=0 (inline dispatches) on <= 2 CPUs when it is unset; set
   LP_NUM_THREADS=2 in the environment to compare with lavapipe's worker threads.

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


def _median_span_ns(ops: WgpuOps, enc: object, qs: object, reps: int) -> float:
    """Resolve `reps` (begin, end) timestamp pairs written into `qs`, submit `enc`: median span in ns."""
    U = ops._U
    res = ops.device.create_buffer(size=16 * reps, usage=U.QUERY_RESOLVE | U.COPY_SRC)
    rb = ops.device.create_buffer(size=16 * reps, usage=U.MAP_READ | U.COPY_DST)
    enc.resolve_query_set(qs, 0, 2 * reps, res, 0)
    enc.copy_buffer_to_buffer(res, 0, rb, 0, 16 * reps)
    ops.queue.submit([enc.finish()])
    rb.map_sync("read")
    ts = np.frombuffer(rb.read_mapped(), np.uint64).astype(np.float64)
    rb.unmap()
    return float(np.median(ts[1::2] - ts[0::2]) * ops.tick_ns)


def encoder_timed(ops: WgpuOps, encode: Callable[[object], None], reps: int) -> float:
    """Median ns of `encode(encoder)`, bracketed by encoder-level timestamps (one warm-up call first)."""
    from wgpu.backends.wgpu_native import extras

    if "timestamp-query-inside-encoders" not in ops.features:
        raise SystemExit("adapter lacks timestamp-query-inside-encoders: cannot time buffer copies")
    qs = ops.device.create_query_set(type="timestamp", count=2 * reps)
    enc = ops.device.create_command_encoder()
    encode(enc)  # warm-up (first-touch page faults)
    for r in range(reps):
        extras.write_timestamp(enc, qs, 2 * r)
        encode(enc)
        extras.write_timestamp(enc, qs, 2 * r + 1)
    return _median_span_ns(ops, enc, qs, reps)


def copy_bandwidth(ops: WgpuOps, nbytes: int, reps: int) -> float:
    """Bytes/s of copy_buffer_to_buffer between two device buffers (copied bytes / time)."""
    U = ops._U
    src = ops.device.create_buffer(size=nbytes, usage=U.COPY_SRC | U.COPY_DST)
    dst = ops.device.create_buffer(size=nbytes, usage=U.COPY_DST)
    return nbytes / encoder_timed(ops, lambda e: e.copy_buffer_to_buffer(src, 0, dst, 0, nbytes), reps) * 1e9


def bench_gemv(ops: WgpuOps, reps: int) -> None:
    """Each round times the 64 MiB copy, one empty-ish dispatch and every shape once (interleaved, so load
    from other processes drifting over the run biases no shape); % of copy is the median over rounds of
    the shape's bandwidth over that round's copy bandwidth. Weights of the other shapes pass through the
    caches between two calls of a shape, as in a decode step."""
    U = ops._U
    nbytes = 64 << 20
    src = ops.device.create_buffer(size=nbytes, usage=U.COPY_SRC | U.COPY_DST)
    dst = ops.device.create_buffer(size=nbytes, usage=U.COPY_DST)
    rng = np.random.default_rng(0)
    cfg = ModelConfig("bench", 8, 64, 64, 1, 1, 1, 64, 64)
    calls = []
    for _model, _proj, n, k in SHAPES:
        h = ops.load_weights(cfg, {"w": rng.standard_normal((n, k), dtype=np.float32)})["w"]
        x = ops.upload(rng.standard_normal((1, 1, k), dtype=np.float32), f"x{k}")
        calls.append(lambda h=h, x=x: ops.linear(x, h, None, name="matmul:q_proj", layer=0))
    a = ops.upload(np.ones((1, 1, 16), np.float32), "a16")
    calls.append(lambda: ops.add(a, a, name="add:attn_residual", layer=0))  # fixed cost of one dispatch
    for fn in calls:  # warm-up: pipeline compile, pool and bind-group creation
        fn()
    ops.synchronize()
    ops.recorder.drain()
    copy_ns = np.zeros(reps)
    ns = np.zeros((reps, len(calls)))
    for r in range(reps):
        copy_ns[r] = encoder_timed(ops, lambda e: e.copy_buffer_to_buffer(src, 0, dst, 0, nbytes), 1)
        for c, fn in enumerate(calls):
            ops.recorder.begin_step(DECODE, r, 1, 1, 1)
            fn()
            ops.recorder.end_step()
            ns[r, c] = _kernel_ns(ops, "add:attn_residual" if c == len(SHAPES) else "matmul:q_proj")[0]
    copy_bw = nbytes / copy_ns  # bytes per ns = GB/s
    threads = os.environ.get("LP_NUM_THREADS", "unset")
    print(f"Adapter: {ops.device_name}; timing: {ops.timing}; dtype {ops.dtype_name}; "
          f"LP_NUM_THREADS={threads}\n")
    print(f"copy_buffer_to_buffer 64 MiB: **{np.median(copy_bw):.2f} GB/s** (copied bytes / time; median of "
          f"{reps} rounds, range {copy_bw.min():.2f}-{copy_bw.max():.2f}); one dispatch of the backend's "
          f"`add` on 16 floats: **{np.median(ns[:, -1]) / 1e3:.0f} µs** (fixed cost per dispatch)\n")
    cols = ["model", "projection", "N x K", "weight MiB", "GEMV µs (median)", "GB/s",
            "% of copy (median of rounds)"]
    print("| " + " | ".join(cols) + " |")
    print("|---|---|---|---:|---:|---:|---:|")
    for c, (model, proj, n, k) in enumerate(SHAPES):
        wbytes = n * k * ops._esize
        bw = wbytes / ns[:, c]
        print(f"| {model} | {proj} | {n} x {k} | {wbytes / 2**20:.1f} | {np.median(ns[:, c]) / 1e3:.0f} | "
              f"{np.median(bw):.2f} | {100 * np.median(bw / copy_bw):.0f}% |")
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


def _grouped_src(n: int, k4: int, g: int, rpt: int, unroll: int, wg: int, stream: bool = False,
                 storage: str = "") -> str:
    """GEMV over a row-interleaved texture (texel (i*g + l, t) = W[t*g + l, 4i..4i+3]): lane l of each
    invocation reads row l of `rpt` consecutive row groups, unrolled `unroll` texels (linear.wgsl's shape).
    storage: a texel format to read W as a read-only storage texture instead of a sampled texture."""
    lines = [f"@compute @workgroup_size({wg})",
             "fn main(@builtin(global_invocation_id) gid: vec3<u32>) {",
             f" let lane = gid.x % {g}u; let gb = (gid.x / {g}u) * {rpt}u;"]
    lines += [f" var a{j} = vec4<f32>(0.0);" for j in range(rpt)]
    lines.append(f" for (var i = 0u; i < {k4}u; i += {unroll}u) {{")
    for u in range(unroll):
        if not stream:
            lines.append(f"  let x{u} = X[i + {u}u];")
        for j in range(rpt):
            ld = f"textureLoad(W, vec2<u32>((i + {u}u) * {g}u + lane, gb + {j}u){'' if storage else ', 0'})"
            lines.append(f"  a{j} += {ld};" if stream else f"  a{j} += {ld} * x{u};")
    lines.append(" }")
    if stream:
        lines.append(" a0 *= X[0].x;")  # keeps the binding layout identical to the GEMV cases
    for j in range(rpt):
        lines += [f" let n{j} = (gb + {j}u) * {g}u + lane;",
                  f" if (n{j} < {n}u) {{ Y[n{j}] = dot(a{j}, vec4<f32>(1.0)); }}"]
    w_decl = f"texture_storage_2d<{storage}, read>" if storage else "texture_2d<f32>"
    return (f"@group(0) @binding(0) var W: {w_decl};\n"
            f"@group(0) @binding(1) var<uniform> X: array<vec4<f32>, {k4}>;\n"
            "@group(0) @binding(2) var<storage, read_write> Y: array<f32>;\n" + "\n".join(lines) + "\n}")


def dispatch_timed(ops: WgpuOps, dispatch: Callable[[object], None], reps: int) -> float:
    """Median ns of `dispatch(pass)`, bracketed by timestamps inside one compute pass (as the backend times
    its ops; encoder-level timestamps would add the pass's own begin/end cost)."""
    from wgpu.backends.wgpu_native import extras

    if "timestamp-query-inside-passes" not in ops.features:
        return encoder_timed(ops, lambda e: _in_pass(e, dispatch), reps)
    qs = ops.device.create_query_set(type="timestamp", count=2 * reps)
    enc = ops.device.create_command_encoder()
    cp = enc.begin_compute_pass()
    dispatch(cp)  # warm-up
    for r in range(reps):
        extras.write_timestamp(cp, qs, 2 * r)
        dispatch(cp)
        extras.write_timestamp(cp, qs, 2 * r + 1)
    cp.end()
    return _median_span_ns(ops, enc, qs, reps)


def _in_pass(e: object, dispatch: Callable[[object], None]) -> None:
    cp = e.begin_compute_pass()
    dispatch(cp)
    cp.end()


def bench_variants(ops: WgpuOps, reps: int, n: int, k: int) -> None:
    import wgpu

    dev, U, TU = ops.device, ops._U, wgpu.TextureUsage
    k4 = k // 4
    g8 = 8
    if n % g8 or k % 16 or k4 * g8 > ops.max_tex:
        raise SystemExit(f"--variants needs N divisible by 8, K by 16, and K <= {ops.max_tex // 2}")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k), dtype=np.float32)
    x = rng.standard_normal(k, dtype=np.float32)
    ref = w.astype(np.float64) @ x
    w_buf = dev.create_buffer_with_data(data=w, usage=U.STORAGE)
    x_st = dev.create_buffer_with_data(data=x, usage=U.STORAGE)
    x_un = dev.create_buffer_with_data(data=x, usage=U.UNIFORM)
    y = dev.create_buffer(size=n * 4, usage=U.STORAGE | U.COPY_SRC)

    def texture(fmt: str, data: np.ndarray, width: int) -> object:
        rows = data.shape[0]
        t = dev.create_texture(size=(width, rows, 1), format=fmt,
                               usage=TU.TEXTURE_BINDING | TU.STORAGE_BINDING | TU.COPY_DST)
        layout = {"bytes_per_row": data.nbytes // rows, "rows_per_image": rows}
        dev.queue.write_texture({"texture": t}, np.ascontiguousarray(data), layout, (width, rows, 1))
        return t.create_view()

    q8 = np.clip(np.round(w / np.abs(w).max(axis=1, keepdims=True) * 127), -127, 127).astype(np.int8)
    w_g8 = w.reshape(n // g8, g8, k4, 4).transpose(0, 2, 1, 3).reshape(n // g8, k4 * g8 * 4)
    tex = {"f32": texture("rgba32float", w, k4), "f16": texture("rgba16float", w.astype(np.float16), k4),
           "f16x8": texture("rgba32uint", w.astype(np.float16), k // 8),
           "q8x16": texture("rgba32uint", q8, k // 16), "g8": texture("rgba32float", w_g8, k4 * g8),
           "g8f16": texture("rgba16float", w_g8.astype(np.float16), k4 * g8)}
    sb = "@group(0) @binding(0) var<storage, read> W: array<vec4<f32>>;"
    tf = "@group(0) @binding(0) var W: texture_2d<f32>;"
    tu = "@group(0) @binding(0) var W: texture_2d<u32>;"
    ts = "@group(0) @binding(0) var W: texture_storage_2d<rgba32float, read>;"
    ld = "textureLoad(W, vec2<u32>(i, n), 0)"
    unpack_f16 = (f"let t = {ld}; a0 += vec4<f32>(unpack2x16float(t.x), unpack2x16float(t.y)) * X[2u * i]"
                  " + vec4<f32>(unpack2x16float(t.z), unpack2x16float(t.w)) * X[2u * i + 1u];")
    unpack_q8 = (f"let t = {ld}; a0 += unpack4x8snorm(t.x) * X[4u * i] + unpack4x8snorm(t.y) * X[4u * i + 1u]"
                 " + unpack4x8snorm(t.z) * X[4u * i + 2u] + unpack4x8snorm(t.w) * X[4u * i + 3u];")
    # (label, source, weight binding, x binding, workgroups, bytes read per call, computes w @ x?)
    cases: list[tuple[str, str, object, object, int, int, str]] = []
    empty = ("@group(0) @binding(2) var<storage, read_write> Y: array<f32>;\n@compute @workgroup_size(8)\n"
             "fn main(@builtin(global_invocation_id) g: vec3<u32>) {\n"
             " if (g.x == 0xffffffffu) { Y[0] = 1.0; }\n}")
    cases.append(("empty dispatch (1 workgroup, no loads): fixed cost", empty, None, None, 1, 0, ""))
    for wg, r in [(64, 4)]:
        body = " for (var i = lid; i < K4; i += WG) { let xv = X[i]; " + " ".join(
            f"a{j} += W[(n0 + {j}u) * K4 + i] * xv;" for j in range(r)) + " }"
        cases.append((f"storage W, coalesced over K, wg {wg}, {r} rows/wg, x uniform",
                      _gemv_src(sb, True, k4, body, wg, r), w_buf, x_un, n // r, n * k * 4, "f32"))
    row = " for (var i = 0u; i < K4; i++) { a0 += W[n * K4 + i] * X[i]; }"
    cases.append(("storage W, row per invocation, wg 16, x uniform", _gemv_src(sb, True, k4, row, 16), w_buf,
                  x_un, n // 16, n * k * 4, "f32"))
    row_t = f" for (var i = 0u; i < K4; i++) {{ a0 += {ld} * X[i]; }}"
    for wg in (16, 64):
        cases.append((f"sampled texture W, one row per texture row, row per invocation, wg {wg}",
                      _gemv_src(tf, True, k4, row_t, wg), tex["f32"], x_un, n // wg, n * k * 4, "f32"))
    two = (" var a1 = vec4<f32>(0.0);\n for (var i = 0u; i < K4; i++) { let xv = X[i];"
           " a0 += textureLoad(W, vec2<u32>(i, 2u * n), 0) * xv;"
           " a1 += textureLoad(W, vec2<u32>(i, 2u * n + 1u), 0) * xv; }")
    store2 = " Y[2u * n] = dot(a0, vec4<f32>(1.0)); Y[2u * n + 1u] = dot(a1, vec4<f32>(1.0));"
    cases.append(("sampled texture W, one row per texture row, 2 rows per invocation, wg 16 "
                  "(previous linear.wgsl)", _gemv_src(tf, True, k4, two, 16, store=store2),
                  tex["f32"], x_un, n // 32, n * k * 4, "f32"))
    cases.append(("sampled texture W, one row per texture row, x in a storage buffer",
                  _gemv_src(tf, False, k4, row_t, 16), tex["f32"], x_st, n // 16, n * k * 4, "f32"))
    cases.append(("sampled texture W, 8 rows interleaved per texture row, 8 row groups per invocation, "
                  "K unrolled x2, wg 8", _grouped_src(n, k4, g8, 8, 2, 8), tex["g8"], x_un, -(-n // 64),
                  n * k * 4, "f32"))
    cases.append(("storage texture W, one row per texture row, 2 rows per invocation, wg 16",
                  _gemv_src(ts, True, k4, two.replace(", 0)", ")"), 16, store=store2),
                  tex["f32"], x_un, n // 32, n * k * 4, "f32"))
    for rpt, unroll, wg in [(1, 2, 8), (2, 2, 8), (4, 2, 8), (8, 1, 8), (8, 2, 8), (8, 4, 8), (8, 2, 16),
                            (16, 2, 8)]:
        label = (f"storage texture W, 8 rows interleaved per texture row, {rpt} row groups per invocation, "
                 f"K unrolled x{unroll}, wg {wg}")
        if (rpt, unroll, wg) == (8, 2, 8):
            label = f"**{label} (= linear.wgsl decode)**"
        cases.append((label, _grouped_src(n, k4, g8, rpt, unroll, wg, storage="rgba32float"), tex["g8"], x_un,
                      -(-n // (rpt * wg)), n * k * 4, "f32"))
    cases.append(("sampled texture rgba16float W (f16), one row per texture row, wg 16",
                  _gemv_src(tf, True, k4, row_t, 16), tex["f16"], x_un, n // 16, n * k * 2, "f16"))
    cases.append(("storage texture rgba16float W (f16), 8 rows interleaved, 8 groups per invocation, "
                  "K unrolled x2, wg 8 (= linear.wgsl decode with --dtype float16)",
                  _grouped_src(n, k4, g8, 8, 2, 8, storage="rgba16float"), tex["g8f16"], x_un, -(-n // 64),
                  n * k * 2, "f16"))
    cases.append(("sampled texture rgba32uint W (8 packed f16/texel), wg 16",
                  _gemv_src(tu, True, k4, f" for (var i = 0u; i < K4 / 2u; i++) {{ {unpack_f16} }}", 16),
                  tex["f16x8"], x_un, n // 16, n * k * 2, "f16"))
    cases.append(("sampled texture rgba32uint W (16 packed int8/texel), wg 16",
                  _gemv_src(tu, True, k4, f" for (var i = 0u; i < K4 / 4u; i++) {{ {unpack_q8} }}", 16),
                  tex["q8x16"], x_un, n // 16, n * k, "q8"))
    # Pure streaming reads (no x, no math beyond a running sum): the ceiling of each load path.
    # (one read of X keeps the binding layout identical to the GEMV cases)
    stream_sb = " for (var i = lid; i < K4; i += WG) { a0 += W[n0 * K4 + i]; } a0 *= X[0].x;"
    cases.append(("pure streaming read: storage W, coalesced, wg 64",
                  _gemv_src(sb, True, k4, stream_sb, 64, 1), w_buf, x_un, n, n * k * 4, ""))
    cases.append(("pure streaming read: sampled texture W, one row per texture row, wg 16",
                  _gemv_src(tf, True, k4, f" for (var i = 0u; i < K4; i++) {{ a0 += {ld}; }}"
                            " a0 *= X[0].x;", 16),
                  tex["f32"], x_un, n // 16, n * k * 4, ""))
    cases.append(("pure streaming read: sampled texture W, 8 rows interleaved, 8 groups per invocation, wg 8",
                  _grouped_src(n, k4, g8, 8, 2, 8, stream=True), tex["g8"], x_un, -(-n // 64), n * k * 4, ""))
    cases.append(("pure streaming read: storage texture W, 8 rows interleaved, 8 groups per invocation, wg 8",
                  _grouped_src(n, k4, g8, 8, 2, 8, stream=True, storage="rgba32float"), tex["g8"], x_un,
                  -(-n // 64), n * k * 4, ""))

    # Interleaved rounds: every variant (and the copy) is timed once per round and the table reports the
    # median over rounds, so load from other processes drifting over the run biases no variant.
    src_buf = dev.create_buffer(size=n * k * 4, usage=U.COPY_SRC | U.COPY_DST)
    dst_buf = dev.create_buffer(size=n * k * 4, usage=U.COPY_DST)
    ref_q8 = (q8.astype(np.float64) / 127) @ x
    dispatches, errs = [], []
    for _label, src, wbind, xbind, n_wg, _nbytes, kind in cases:
        pl = dev.create_compute_pipeline(layout="auto", compute={
            "module": dev.create_shader_module(code=src), "entry_point": "main"})
        entries = [{"binding": 2, "resource": {"buffer": y, "offset": 0, "size": y.size}}]
        if wbind is not None:
            w_res = wbind if isinstance(wbind, wgpu.GPUTextureView) else {"buffer": wbind, "offset": 0,
                                                                          "size": wbind.size}
            entries += [{"binding": 0, "resource": w_res},
                        {"binding": 1, "resource": {"buffer": xbind, "offset": 0, "size": xbind.size}}]
        bg = dev.create_bind_group(layout=pl.get_bind_group_layout(0), entries=entries)

        def dispatch(cp: object, pl: object = pl, bg: object = bg, n_wg: int = n_wg) -> None:
            cp.set_pipeline(pl)
            cp.set_bind_group(0, bg)
            cp.dispatch_workgroups(n_wg)

        dispatches.append(dispatch)
        encode_once = dev.create_command_encoder()
        _in_pass(encode_once, dispatch)
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
        for c, dispatch in enumerate(dispatches):
            times[r, c] = dispatch_timed(ops, dispatch, 1)
    copy_bw = n * k * 4 / np.median(copy_ns) * 1e9
    threads = os.environ.get("LP_NUM_THREADS", "default")
    print(f"GEMV design variants, N x K = {n} x {k}, LP_NUM_THREADS={threads}, median over {reps} "
          f"interleaved rounds of GPU-timestamped dispatches; copy_buffer_to_buffer of the f32 weight size: "
          f"**{copy_bw / 1e9:.2f} GB/s**\n")
    print("| variant | µs | GB/s of bytes read | % of copy | f32-equivalent GB/s | max rel err |")
    print("|---|---:|---:|---:|---:|---:|")
    for (label, *_rest, nbytes, _kind), ns, err in zip(cases, np.median(times, axis=0), errs, strict=True):
        bw = nbytes / ns * 1e9
        f32eq = f"{n * k * 4 / ns:.2f}" if nbytes else "—"
        print(f"| {label} | {ns / 1e3:.0f} | {bw / 1e9:.2f} | {100 * bw / copy_bw:.0f}% | {f32eq} | {err} |")
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
