"""Backend construction by name: the one place that maps `--backend` to an `Ops`."""

from __future__ import annotations

from llmtop.errors import UsageError
from llmtop.kernels.base import KernelRecorder, Ops

BACKENDS = ("auto", "cpu", "cuda", "wgpu")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # auto: bfloat16 on CUDA, float32 elsewhere


def pick_backend() -> str:
    """The best backend present: cuda when torch sees a GPU, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_backend(backend: str, dtype: str) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if dtype not in DTYPE_CHOICES:
        raise UsageError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPE_CHOICES)})")


def make_ops(backend: str, dtype: str = "float32", *, threads: int | None = None, timing: bool = True,
             adapter: str | None = None, gpu_sample_s: float = 2.0) -> Ops:
    """The Ops for a backend name; unknown names and missing hardware raise LlmtopError.

    `adapter` (wgpu only) picks a WebGPU adapter by a substring of its "device (backend)" label. A wgpu
    backend runs its start-up self-check here and refuses an adapter that computes wrong results.
    """
    check_backend(backend, dtype)
    if backend == "auto":
        backend = pick_backend()
    if backend == "wgpu":
        from llmtop.kernels.wgpu_backend import WgpuOps

        return WgpuOps(KernelRecorder(enabled=timing), "float32" if dtype == "auto" else dtype,
                       timing="auto" if timing else "off",
                       adapter=adapter)
    if adapter is not None:
        raise UsageError("adapter selection applies to the wgpu backend only")
    from llmtop.kernels.torch_backend import TorchOps

    return TorchOps(KernelRecorder(enabled=timing), device=backend, dtype=dtype, threads=threads,
                    gpu_sample_s=gpu_sample_s)
