// RMSNorm, one workgroup per row: y = x * rsqrt(mean(x^2) + eps) * w, accumulated in f32.
struct Params { rows: u32, d4: u32, eps: f32, _pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<ST4>;
@group(0) @binding(1) var<storage, read> w: array<ST4>;
@group(0) @binding(2) var<storage, read_write> y: array<ST4>;
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    let base = row * p.d4;
    var s = 0.0;
    if (row < p.rows) {
        for (var i = lid; i < p.d4; i += 64u) {
            let v = vec4<f32>(x[base + i]);
            s += dot(v, v);
        }
    }
    red[lid] = s;
    workgroupBarrier();
    for (var off = 32u; off > 0u; off >>= 1u) {
        if (lid < off) { red[lid] += red[lid + off]; }
        workgroupBarrier();
    }
    if (row >= p.rows) { return; }
    let inv = inverseSqrt(red[0] / f32(p.d4 * 4u) + p.eps);
    for (var i = lid; i < p.d4; i += 64u) {
        y[base + i] = ST4(vec4<f32>(x[base + i]) * inv * vec4<f32>(w[i]));
    }
}
