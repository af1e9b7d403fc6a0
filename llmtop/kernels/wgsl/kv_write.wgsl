// Store this step's k, v (B*T tokens x Hkv*hd) into the resident cache (B, Hkv, max_ctx, hd) at their positions.
struct Params { ntok: u32, t: u32, hkv: u32, hd4: u32, max_ctx: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> k: array<ST4>;
@group(0) @binding(1) var<storage, read> v: array<ST4>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> kc: array<ST4>;
@group(0) @binding(4) var<storage, read_write> vc: array<ST4>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.ntok * p.hkv * p.hd4) { return; }
    let d = i % p.hd4;
    let h = (i / p.hd4) % p.hkv;
    let tok = i / (p.hd4 * p.hkv);
    let b = tok / p.t;
    let ps = pos[tok];
    if (ps < 0 || u32(ps) >= p.max_ctx) { return; }
    let dst = ((b * p.hkv + h) * p.max_ctx + u32(ps)) * p.hd4 + d;
    kc[dst] = k[i];
    vc[dst] = v[i];
}
