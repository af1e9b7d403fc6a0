// Top-k candidates of each logits row (greedy = k 1), one workgroup of 256 threads per row.
// k rounds of a workgroup argmax, each restricted to entries ranked below the previous winner in
// (value desc, index asc) order, so ties resolve to the lowest index like torch.argmax.
struct Params { v: u32, k: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<storage, read> logits: array<ST>;
@group(0) @binding(1) var<storage, read_write> out: array<vec2<u32>>;  // (index, bitcast f32 value)
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> rv: array<f32, WG>;
var<workgroup> ri: array<u32, WG>;

fn better(av: f32, ai: u32, bv: f32, bi: u32) -> bool {
    return av > bv || (av == bv && ai < bi);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    let base = row * p.v;
    var prev_v = 3.4e38;
    var prev_i = 0u;
    var first = true;
    for (var r = 0u; r < p.k; r++) {
        var bv = -3.4e38;
        var bi = 0xffffffffu;
        for (var i = lid; i < p.v; i += WG) {
            let x = f32(logits[base + i]);
            let below = first || x < prev_v || (x == prev_v && i > prev_i);
            if (below && better(x, i, bv, bi)) { bv = x; bi = i; }
        }
        rv[lid] = bv;
        ri[lid] = bi;
        workgroupBarrier();
        for (var off = WG / 2u; off > 0u; off >>= 1u) {
            if (lid < off && better(rv[lid + off], ri[lid + off], rv[lid], ri[lid])) {
                rv[lid] = rv[lid + off];
                ri[lid] = ri[lid + off];
            }
            workgroupBarrier();
        }
        prev_v = rv[0];
        prev_i = ri[0];
        first = false;
        if (lid == 0u) { out[row * p.k + r] = vec2<u32>(prev_i, bitcast<u32>(prev_v)); }
        workgroupBarrier();
    }
}
