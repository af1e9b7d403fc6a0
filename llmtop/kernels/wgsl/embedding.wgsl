// Gather rows of the embedding table: out[r, :] = table[ids[r], :].
// The table is the weight texture shared with a tied lm_head, in linear.wgsl's row-interleaved layout
// (texel (c*G + id%G, id/G) holds values 4c..4c+3 of row id); tables taller than the texture limit are
// split into row chunks, and one dispatch per chunk copies only the ids in [row0, row0 + nrows).
const G: u32 = {{G}}u;
struct Params { rows: u32, d4: u32, row0: u32, nrows: u32 }

@group(0) @binding(0) var table: texture_2d<f32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<ST4>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.rows * p.d4) { return; }
    let id = ids[i / p.d4];
    if (id < p.row0 || id >= p.row0 + p.nrows) { return; }
    let n = id - p.row0;
    dst[i] = ST4(textureLoad(table, vec2<u32>((i % p.d4) * G + n % G, n / G), 0));
}
