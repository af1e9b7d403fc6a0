"""Backend construction by name: the one place that maps `--backend` to an `Ops`."""

from __future__ import annotations

from llmtop.errors import UsageError
from llmtop.kernels.base import KernelRecorder, Ops

BACKENDS = ("auto", "cpu", "cuda", "wgpu")
DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def pick_backend() -> str:
    """The best backend present: cuda when torch sees a GPU, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_backend(backend: str, dtype: str) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if dtype not in DTYPE_CHOICES:
        raise UsageError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPE_CHOICES)})")


def make_ops(backend: str, dtype: str = "float32", *, threads: int | None = None, timing: bool = True) -> Ops:
    """The Ops for a backend name; unknown names and missing hardware raise LlmtopError."""
    check_backend(backend, dtype)
    if backend == "auto":
        backend = pick_backend()
    if backend == "wgpu":
        from llmtop.kernels.wgpu_backend import WgpuOps, create_wgpu_ops

        if not timing:
            return WgpuOps(KernelRecorder(enabled=False), dtype, timing="off")
        return create_wgpu_ops(KernelRecorder(enabled=True), dtype)
    from llmtop.kernels.torch_backend import TorchOps

    return TorchOps(KernelRecorder(enabled=timing), device=backend, dtype=dtype, threads=threads)
