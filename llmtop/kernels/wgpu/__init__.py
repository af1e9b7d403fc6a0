"""The WebGPU backend, by concept: device.py (adapters, device, KV cache layout), resources.py (buffers,
textures, pipelines, bind groups), timing.py (encoder, timestamps, readback) and ops.py (`WgpuOps`).
`llmtop.kernels.wgpu_backend` re-exports the public names. Nothing here imports wgpu-py until a `WgpuOps`
is made, so importing the package costs nothing on machines without it.
"""
