// Store this step's k, v (B*T tokens x Hkv*hd) into the resident cache at their positions.
// seg: positions per texture layer; nseg: layers per sequence (contexts beyond the texture height).
struct Params { ntok: u32, t: u32, hkv: u32, hd4: u32, max_ctx: u32, seg: u32, nseg: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> k: array<ST4>;
@group(0) @binding(1) var<storage, read> v: array<ST4>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
// Cache textures: texel (h * hd4 + d, position % seg) of layer b * nseg + position / seg.
@group(0) @binding(3) var kc: texture_storage_2d_array<{{FMT}}, write>;
@group(0) @binding(4) var vc: texture_storage_2d_array<{{FMT}}, write>;
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
    let c = vec2<u32>(h * p.hd4 + d, u32(ps) % p.seg);
    let layer = b * p.nseg + u32(ps) / p.seg;
    textureStore(kc, c, layer, vec4<f32>(k[i]));
    textureStore(vc, c, layer, vec4<f32>(v[i]));
}
