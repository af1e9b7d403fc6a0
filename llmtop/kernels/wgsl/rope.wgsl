// Rotary embedding in place on q and k, HF rotate_half layout: the pair is (i, i + hd/2).
// cos/sin come from host tables (max_ctx x hd/2, f32) computed like transformers, incl. rope_scaling.
struct Params { ntok: u32, hq: u32, hkv: u32, half: u32, max_pos: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read_write> q: array<ST>;
@group(0) @binding(1) var<storage, read_write> k: array<ST>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read> cos_t: array<f32>;
@group(0) @binding(4) var<storage, read> sin_t: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let heads = p.hq + p.hkv;
    if (i >= p.ntok * heads * p.half) { return; }
    let j = i % p.half;
    let h = (i / p.half) % heads;
    let t = i / (p.half * heads);
    let ps = u32(clamp(pos[t], 0, i32(p.max_pos) - 1));
    let c = cos_t[ps * p.half + j];
    let s = sin_t[ps * p.half + j];
    let hd = 2u * p.half;
    if (h < p.hq) {
        let b = (t * p.hq + h) * hd + j;
        let x1 = f32(q[b]);
        let x2 = f32(q[b + p.half]);
        q[b] = ST(x1 * c - x2 * s);
        q[b + p.half] = ST(x2 * c + x1 * s);
    } else {
        let b = (t * p.hkv + (h - p.hq)) * hd + j;
        let x1 = f32(k[b]);
        let x2 = f32(k[b + p.half]);
        k[b] = ST(x1 * c - x2 * s);
        k[b + p.half] = ST(x2 * c + x1 * s);
    }
}
