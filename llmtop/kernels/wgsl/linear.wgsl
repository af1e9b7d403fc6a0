// Linear layer for decode (MB = 1: GEMV) and prefill (MB activation rows per dispatch):
// Y[m0 + r, row0 + n] = dot(X[r, :], W[n, :]) (+ bias) for r < MB.
// Why this shape (measured on Mesa lavapipe, see benchmarks/bench_wgpu_kernels.py --variants):
// - W is a texture (rgba32float / rgba16float, one texel = 4 weights, K/4 wide, one row per output):
//   llvmpipe lowers textureLoad to a branch-free SIMD gather, whereas every lane-varying storage-buffer
//   load becomes a per-lane loop with a bounds check (~10x slower).
// - X is a uniform buffer (<= 64 KiB; the engine's activation buffer bound with an offset): every lane
//   reads the same X word, which llvmpipe serves with one scalar load; from a storage buffer it would
//   again take the per-lane loop.
// - No workgroup memory or barriers (barriers are coroutine switches on llvmpipe). Each invocation holds an
//   RPT x MB register tile (RPT weight rows x MB activation rows): every weight texel is read once per
//   dispatch and reused for MB activation rows, every X word is reused for RPT weight rows. Decode uses
//   2 x 1 (1.2-1.6x faster than 1 x 1; 4 x 1 mixed), prefill 4 x 8 (about 3x less time per token than 1 x 8).
// The host repeats lines ending in //@rows for r < MB, //@cols for j < RPT, //@tile for both (unrolled).
const MB: u32 = {{MB}}u;
const RPT: u32 = {{RPT}}u;
// xoff: misalignment of row m0 inside the bound X window, in 4-element words.
struct Params { nrows: u32, k4: u32, m0: u32, row0: u32, ldy: u32, has_bias: u32, xoff: u32, _p1: u32 }

@group(0) @binding(0) var W: texture_2d<f32>;
@group(0) @binding(1) var<uniform> X: array<{{XU}}, {{XN}}>;
@group(0) @binding(2) var<storage, read_write> Y: array<ST>;
@group(0) @binding(3) var<storage, read> bias: array<ST>;
@group(0) @binding(4) var<uniform> p: Params;

fn xload(i: u32) -> vec4<f32> { {{XLOAD}} }

const WG: u32 = 16u;  // best of 8/16/32/64 in --variants (two llvmpipe SIMD vectors)

@compute @workgroup_size(16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let base = (gid.x + gid.y * nwg.x * WG) * RPT;
    if (base >= p.nrows) { return; }
    let n{j} = min(base + {j}u, p.nrows - 1u);  //@cols
    var a{r}_{j} = vec4<f32>(0.0);  //@tile
    for (var i = 0u; i < p.k4; i++) {
        let w{j} = textureLoad(W, vec2<u32>(i, n{j}), 0);  //@cols
        let x{r} = xload(p.xoff + {r}u * p.k4 + i);  //@rows
        a{r}_{j} += w{j} * x{r};  //@tile
    }
    var b{j} = 0.0;  //@cols
    if (p.has_bias != 0u) { b{j} = f32(bias[p.row0 + n{j}]); }  //@cols
    // Rows past the end were clamped to the last row above; only real rows are stored.
    if (base + {j}u < p.nrows) { Y[(p.m0 + {r}u) * p.ldy + p.row0 + base + {j}u] = ST(dot(a{r}_{j}, vec4<f32>(1.0)) + b{j}); }  //@tile
}
