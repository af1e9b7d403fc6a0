// Temperature softmax of each logits row into f32 probabilities (full-vocabulary sampling; the host
// applies top-p and draws). One workgroup of 256 threads per row.
struct Params { v: u32, inv_temp: f32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<storage, read> logits: array<ST>;
@group(0) @binding(1) var<storage, read_write> probs: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * p.v;
    var mx = -3.4e38;
    for (var i = lid; i < p.v; i += WG) { mx = max(mx, f32(logits[base + i]) * p.inv_temp); }
    red[lid] = mx;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off >>= 1u) {
        if (lid < off) { red[lid] = max(red[lid], red[lid + off]); }
        workgroupBarrier();
    }
    mx = red[0];
    workgroupBarrier();
    var s = 0.0;
    for (var i = lid; i < p.v; i += WG) {
        let e = exp(f32(logits[base + i]) * p.inv_temp - mx);
        probs[base + i] = e;
        s += e;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off >>= 1u) {
        if (lid < off) { red[lid] += red[lid + off]; }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];
    for (var i = lid; i < p.v; i += WG) { probs[base + i] *= inv; }
}
