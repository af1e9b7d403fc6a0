"""The WebGPU backend's public names (the code lives in llmtop/kernels/wgpu/, one file per concept).

Tests that break a shader on purpose set `llmtop.kernels.wgpu.resources.SHADER_HOOK`, where shaders are
compiled.
"""

from __future__ import annotations

from llmtop.kernels.wgpu.device import adapter_label, kv_cache_layout, list_adapters
from llmtop.kernels.wgpu.ops import LINEAR_MAX_MB, TOPK_MAX, WgpuOps, create_wgpu_ops
from llmtop.kernels.wgpu.resources import WMatrix, WTensor

__all__ = [
    "LINEAR_MAX_MB", "TOPK_MAX", "WMatrix", "WTensor", "WgpuOps", "adapter_label", "create_wgpu_ops",
    "kv_cache_layout", "list_adapters",
]
