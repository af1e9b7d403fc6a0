// Prefill matmul: Y[m, row0 + n] = sum_k X[m, k] * W[n, k] (+ bias). 32x32 output tile per workgroup,
// 8x8 threads with a 4x4 register block each, K staged through workgroup memory 32 at a time.
struct Params { nrows: u32, k4: u32, m: u32, row0: u32, ldy: u32, has_bias: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<storage, read> W: array<ST4>;
@group(0) @binding(1) var<storage, read> X: array<ST4>;
@group(0) @binding(2) var<storage, read_write> Y: array<ST>;
@group(0) @binding(3) var<storage, read> bias: array<ST>;
@group(0) @binding(4) var<uniform> p: Params;

const TILE: u32 = 32u;
const KT4: u32 = 8u;  // 32 k values as 8 vec4
var<workgroup> xs: array<vec4<f32>, 256>;  // [row][kt4]
var<workgroup> ws: array<vec4<f32>, 256>;

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let n_base = wid.x * TILE;
    let m_base = wid.y * TILE;
    let tx = lid3.x;
    let ty = lid3.y;
    var acc: array<vec4<f32>, 4>;  // acc[i][j]: row m_base + ty*4 + i, col n_base + tx*4 + j
    for (var k0 = 0u; k0 < p.k4; k0 += KT4) {
        for (var e = lid; e < TILE * KT4; e += 64u) {
            let r = e / KT4;
            let c = k0 + e % KT4;
            let mr = m_base + r;
            let nr = n_base + r;
            var xv = vec4<f32>(0.0);
            var wv = vec4<f32>(0.0);
            if (mr < p.m && c < p.k4) { xv = vec4<f32>(X[mr * p.k4 + c]); }
            if (nr < p.nrows && c < p.k4) { wv = vec4<f32>(W[nr * p.k4 + c]); }
            xs[e] = xv;
            ws[e] = wv;
        }
        workgroupBarrier();
        for (var c = 0u; c < KT4; c++) {
            let w0 = ws[(tx * 4u + 0u) * KT4 + c];
            let w1 = ws[(tx * 4u + 1u) * KT4 + c];
            let w2 = ws[(tx * 4u + 2u) * KT4 + c];
            let w3 = ws[(tx * 4u + 3u) * KT4 + c];
            for (var i = 0u; i < 4u; i++) {
                let xv = xs[(ty * 4u + i) * KT4 + c];
                acc[i] += vec4<f32>(dot(xv, w0), dot(xv, w1), dot(xv, w2), dot(xv, w3));
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m_base + ty * 4u + i;
        if (m >= p.m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let n = n_base + tx * 4u + j;
            if (n >= p.nrows) { continue; }
            var v = acc[i][j];
            if (p.has_bias != 0u) { v += f32(bias[p.row0 + n]); }
            Y[m * p.ldy + p.row0 + n] = ST(v);
        }
    }
}
