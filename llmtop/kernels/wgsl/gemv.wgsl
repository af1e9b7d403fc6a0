// Decode GEMV for up to 4 activation rows: Y[m, row0 + n] = dot(X[m, :], W[n, :]) (+ bias).
// One workgroup owns 4 weight rows; its 64 threads stride the reduction dimension with vec4 loads
// (adjacent threads read adjacent 16-byte words: coalesced on GPUs). Each thread keeps all 4 rows
// in flight so every X load is reused 4 times, then the workgroup tree-reduces the partial sums.
struct Params { nrows: u32, k4: u32, m: u32, row0: u32, ldy: u32, has_bias: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<storage, read> W: array<ST4>;
@group(0) @binding(1) var<storage, read> X: array<ST4>;
@group(0) @binding(2) var<storage, read_write> Y: array<ST>;
@group(0) @binding(3) var<storage, read> bias: array<ST>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 64u;
var<workgroup> red: array<vec4<f32>, 256>;  // [m][thread]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let n0 = (wid.x + wid.y * nwg.x) * 4u;
    let last = p.nrows - 1u;
    // Clamp tail rows to a valid row so the loop stays branch-free; their sums are discarded.
    let b0 = min(n0, last) * p.k4;
    let b1 = min(n0 + 1u, last) * p.k4;
    let b2 = min(n0 + 2u, last) * p.k4;
    let b3 = min(n0 + 3u, last) * p.k4;
    var acc: array<vec4<f32>, 4>;
    for (var i = lid; i < p.k4; i += WG) {
        let w0 = vec4<f32>(W[b0 + i]);
        let w1 = vec4<f32>(W[b1 + i]);
        let w2 = vec4<f32>(W[b2 + i]);
        let w3 = vec4<f32>(W[b3 + i]);
        for (var m = 0u; m < p.m; m++) {
            let xv = vec4<f32>(X[m * p.k4 + i]);
            acc[m] += vec4<f32>(dot(w0, xv), dot(w1, xv), dot(w2, xv), dot(w3, xv));
        }
    }
    for (var m = 0u; m < 4u; m++) { red[m * WG + lid] = acc[m]; }
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off >>= 1u) {
        if (lid < off) {
            for (var m = 0u; m < p.m; m++) { red[m * WG + lid] += red[m * WG + lid + off]; }
        }
        workgroupBarrier();
    }
    if (lid < 4u * p.m) {
        let m = lid / 4u;
        let r = lid % 4u;
        let n = n0 + r;
        if (n < p.nrows) {
            var v = red[m * WG][r];
            if (p.has_bias != 0u) { v += f32(bias[p.row0 + n]); }
            Y[m * p.ldy + p.row0 + n] = ST(v);
        }
    }
}
