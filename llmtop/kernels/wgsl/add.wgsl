// Residual add, elementwise on vec4.
struct Params { n4: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> a: array<ST4>;
@group(0) @binding(1) var<storage, read> b: array<ST4>;
@group(0) @binding(2) var<storage, read_write> y: array<ST4>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n4) { return; }
    y[i] = ST4(vec4<f32>(a[i]) + vec4<f32>(b[i]));
}
