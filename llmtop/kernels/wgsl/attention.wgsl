// Grouped-query attention over the resident KV cache, causal by position; prefill and decode.
// One workgroup per (token, kv head) serves all G query heads of the group, so each K/V row is read
// once per token (decode: the cache is read once per step, cost linear in context). Keys are consumed
// in chunks of 64 with an online softmax (running max m and sum l per head), so there is no
// context-sized scratch and nothing is allocated per step. G and HD are specialised per model.
const G: u32 = {{G}}u;
const HD: u32 = {{HD}}u;
const HD4: u32 = HD / 4u;
const WG: u32 = 64u;
const DPT: u32 = (HD + WG - 1u) / WG;  // head dims owned by each thread in the P.V phase

struct Params { ntok: u32, t: u32, hkv: u32, max_ctx: u32, scale: f32, seg: u32, nseg: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> q: array<ST>;
@group(0) @binding(1) var<storage, read> pos: array<i32>;
// The cache is a pair of textures (width Hkv*HD/4 texels; position j of sequence b at row j % seg of
// layer b * nseg + j / seg, so contexts may exceed the texture height):
// lavapipe gathers texels with SIMD loads but walks storage-buffer loads lane by lane.
@group(0) @binding(2) var kc: texture_2d_array<f32>;
@group(0) @binding(3) var vc: texture_2d_array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<ST>;
@group(0) @binding(5) var<uniform> p: Params;

var<workgroup> qs: array<vec4<f32>, G * HD4>;
var<workgroup> ps: array<f32, G * WG>;   // scores, then probabilities, of the current chunk
var<workgroup> red: array<f32, G * WG>;

fn reduce(lid: u32, is_max: bool) {
    for (var off = WG / 2u; off > 0u; off >>= 1u) {
        if (lid < off) {
            for (var g = 0u; g < G; g++) {
                let a = red[g * WG + lid];
                let b = red[g * WG + lid + off];
                red[g * WG + lid] = select(a + b, max(a, b), is_max);
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;        // kv head
    let tok = wid.y;      // flattened (b, t)
    let b = tok / p.t;
    let n_keys = u32(clamp(pos[tok], 0, i32(p.max_ctx) - 1)) + 1u;
    let hq = p.hkv * G;
    for (var e = lid; e < G * HD4; e += WG) {
        let g = e / HD4;
        let d = (e % HD4) * 4u;
        let qb = (tok * hq + h * G + g) * HD + d;
        qs[e] = vec4<f32>(f32(q[qb]), f32(q[qb + 1u]), f32(q[qb + 2u]), f32(q[qb + 3u])) * p.scale;
    }
    var m: array<f32, G>;
    var l: array<f32, G>;
    var acc: array<f32, G * DPT>;
    for (var g = 0u; g < G; g++) { m[g] = -3.0e38; l[g] = 0.0; }
    workgroupBarrier();
    for (var c0 = 0u; c0 < n_keys; c0 += WG) {
        let j = c0 + lid;
        let valid = j < n_keys;
        var s: array<f32, G>;
        for (var g = 0u; g < G; g++) { s[g] = -3.0e38; }
        if (valid) {
            for (var g = 0u; g < G; g++) { s[g] = 0.0; }
            for (var d = 0u; d < HD4; d++) {
                let kv = textureLoad(kc, vec2<u32>(h * HD4 + d, j % p.seg), b * p.nseg + j / p.seg, 0);
                for (var g = 0u; g < G; g++) { s[g] += dot(qs[g * HD4 + d], kv); }
            }
        }
        for (var g = 0u; g < G; g++) { red[g * WG + lid] = s[g]; }
        workgroupBarrier();
        reduce(lid, true);
        var alpha: array<f32, G>;
        for (var g = 0u; g < G; g++) {
            let m_new = max(m[g], red[g * WG]);
            alpha[g] = exp(m[g] - m_new);
            m[g] = m_new;
            let pr = select(0.0, exp(s[g] - m_new), valid);
            ps[g * WG + lid] = pr;
        }
        workgroupBarrier();  // everyone has read red[g*WG] (the max) before it is overwritten
        for (var g = 0u; g < G; g++) { red[g * WG + lid] = ps[g * WG + lid]; }
        workgroupBarrier();
        reduce(lid, false);
        for (var g = 0u; g < G; g++) { l[g] = l[g] * alpha[g] + red[g * WG]; }
        let cnt = min(WG, n_keys - c0);
        for (var u = 0u; u < DPT; u++) {
            let d = lid + u * WG;
            if (d >= HD) { break; }
            for (var g = 0u; g < G; g++) { acc[g * DPT + u] *= alpha[g]; }
            for (var jj = 0u; jj < cnt; jj++) {
                let jv = c0 + jj;
                let vv = textureLoad(vc, vec2<u32>(h * HD4 + d / 4u, jv % p.seg), b * p.nseg + jv / p.seg, 0)[d % 4u];
                for (var g = 0u; g < G; g++) { acc[g * DPT + u] += ps[g * WG + jj] * vv; }
            }
        }
        workgroupBarrier();  // ps and red are rewritten by the next chunk
    }
    for (var u = 0u; u < DPT; u++) {
        let d = lid + u * WG;
        if (d >= HD) { break; }
        for (var g = 0u; g < G; g++) {
            o[(tok * hq + h * G + g) * HD + d] = ST(acc[g * DPT + u] / l[g]);
        }
    }
}
