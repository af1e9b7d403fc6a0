// Linear layer for decode (MB = 1: GEMV) and prefill (MB activation rows per dispatch):
// Y[m0 + r, row0 + n] = dot(X[r, :], W[n, :]) (+ bias) for r < MB.
// Why this shape: measured on Mesa 22.3 lavapipe (llvmpipe, 8-lane AVX2 SIMD) with
// `benchmarks/bench_wgpu_kernels.py --variants` (N x K = 4096 x 2048; every variant timed with GPU
// timestamps in interleaved rounds against copy_buffer_to_buffer of the same bytes, 8.2 GB/s; % below are
// of that copy; 2-core VM under load, one lavapipe thread, see wgpu_backend._lavapipe_threads):
// - W is a read-only storage texture (rgba32float / rgba16float, one texel = 4 weights). llvmpipe's image
//   load is a plain 8-lane gather: 9.2-9.6 GB/s (112-117 %) here, vs 4.6 GB/s (56 %) for the same kernel
//   through a sampled texture's textureLoad (sampler/mip/format path) and 0.3-0.5 GB/s (3-6 %) from a
//   storage buffer (a per-lane loop with a bounds check in this Mesa, even for a workgroup-uniform index).
//   Pure streaming reads: 12.3 GB/s (150 %) storage texture, 5.1 GB/s (63 %) sampled.
// - Rows interleaved G = 8 per texture row: texel (i*G + l, g) = W[g*G + l, 4i..4i+3], and lane l of an
//   llvmpipe SIMD vector handles row g*G + l, so one 8-lane load reads 128 contiguous bytes instead of 8
//   texels K*4 bytes apart: 4.3 GB/s (52 %) one row per texture row vs 9.2 GB/s interleaved.
// - RPT = 8 row groups per invocation (8 loads in flight per K step, each X word reused 8 times):
//   1 / 2 / 4 / 8 / 16 groups reach 61 / 90 / 111 / 112-117 / 94 %. Unrolling the K loop by 1, 2 or 4 and
//   workgroup size 8 / 16 are within noise (GEMV unrolls by 2, which never measured worse).
// - X is a uniform buffer (<= 64 KiB; the engine's activation buffer bound with an offset): every lane
//   reads the same X word, which llvmpipe serves with one scalar load; from a storage buffer it takes the
//   per-lane loop again (x in storage: 0.5 GB/s with sampled-texture weights).
// - K4 is a pipeline constant (known trip count); no workgroup memory or barriers (barriers are coroutine
//   switches on llvmpipe). Each invocation holds an RPT x MB register tile: every weight texel is read once
//   per dispatch and reused for MB activation rows. Prefill uses 8 x 8 without K unrolling.
// - The previous kernel (sampled texture, one row per texture row, 2 rows per invocation, wg 16): 2.75 GB/s
//   (34 %). What is left at small N is the fixed cost of a dispatch: 4-20 µs inline, 50-250 µs with
//   lavapipe worker threads.
// The host repeats each line ending in //@ for every combination of the placeholders it contains:
// {r} < MB, {j} < RPT, {u} < U (unrolled, so every accumulator stays in registers).
const MB: u32 = {{MB}}u;
const RPT: u32 = {{RPT}}u;
const G: u32 = {{G}}u;  // weight rows interleaved per texture row (the host picks 8 unless K is too wide)
const WG: u32 = {{WG}}u;
const K4: u32 = {{K4}}u;  // texels per weight row: a constant, so the loop trip count is known
const U: u32 = {{U}}u;  // K-loop unroll (divides K4)
// xoff: misalignment of row m0 inside the bound X window, in 4-element words.
struct Params { nrows: u32, k4: u32, m0: u32, row0: u32, ldy: u32, has_bias: u32, xoff: u32, _p1: u32 }

// W: a read-only storage texture, or a sampled texture_2d on adapters that refuse those (WgpuOps.weight_read).
@group(0) @binding(0) var W: {{WDECL}};
@group(0) @binding(1) var<uniform> X: array<{{XU}}, {{XN}}>;
@group(0) @binding(2) var<storage, read_write> Y: array<ST>;
@group(0) @binding(3) var<storage, read> bias: array<ST>;
@group(0) @binding(4) var<uniform> p: Params;

fn xload(i: u32) -> vec4<f32> { {{XLOAD}} }
fn wload(c: vec2<u32>) -> vec4<f32> { return {{WLOAD}}; }

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG;
    let lane = t % G;
    let gb = (t / G) * RPT;  // first row group (texture row) of this invocation
    if (gb * G + lane >= p.nrows) { return; }
    // Groups past the last are clamped onto it (their rows are not stored); padding rows of the last
    // group are zeros in the texture.
    let last = (p.nrows - 1u) / G;
    let g{j} = min(gb + {j}u, last);  //@
    var a{r}_{j} = vec4<f32>(0.0);  //@
    for (var i = 0u; i < K4; i += U) {
        let w{u}_{j} = wload(vec2<u32>((i + {u}u) * G + lane, g{j}));  //@
        let x{u}_{r} = xload(p.xoff + {r}u * K4 + i + {u}u);  //@
        a{r}_{j} += w{u}_{j} * x{u}_{r};  //@
    }
    let n{j} = (gb + {j}u) * G + lane;  //@
    var b{j} = 0.0;  //@
    if (p.has_bias != 0u) { b{j} = f32(bias[p.row0 + min(n{j}, p.nrows - 1u)]); }  //@
    if (n{j} < p.nrows) { Y[(p.m0 + {r}u) * p.ldy + p.row0 + n{j}] = ST(dot(a{r}_{j}, vec4<f32>(1.0)) + b{j}); }  //@
}
