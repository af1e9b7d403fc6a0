"""The WebGPU adapter and device: finding and picking adapters, the Mesa/lavapipe environment, the device
with the features timing needs, and the KV cache texture layout the adapter's limits allow."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from typing import Any

from llmtop.errors import LlmtopError

TIMINGS = ("auto", "inside-pass", "per-pass", "off")


def enumerate_adapters(wgpu: Any) -> list[Any]:
    """Every adapter wgpu finds, restricted to WGPU_BACKEND_TYPE when the user forced a backend (wgpu-py
    applies that variable to request_adapter only)."""
    found = list(wgpu.gpu.enumerate_adapters_sync())
    forced = os.environ.get("WGPU_BACKEND_TYPE", "").strip()
    return [a for a in found if not forced or a.info.get("backend_type", "").lower() == forced.lower()]


def list_adapters() -> list[str]:
    """Labels of the adapters present (tests parametrize over them); [] without wgpu or an adapter."""
    quiet_mesa()
    lavapipe_threads()
    try:
        import wgpu
        return [adapter_label(a) for a in enumerate_adapters(wgpu)]
    except Exception:  # no wgpu, no driver: nothing to list
        return []


def pick_adapter(wgpu: Any, name: str | None, power_preference: str) -> Any:
    """The adapter to run on: the first whose "device (backend)" contains `name` (case-insensitive), or
    wgpu's choice for `power_preference`. wgpu-py also honours WGPU_BACKEND_TYPE (Vulkan, OpenGL, Metal,
    D3D12) and WGPUPY_WGPU_ADAPTER_NAME."""
    if name:
        found = enumerate_adapters(wgpu)
        labels = [adapter_label(a) for a in found]
        for a, label in zip(found, labels, strict=True):
            if name.lower() in label.lower():
                return a
        raise LlmtopError(f"--backend wgpu: no WebGPU adapter matches {name!r} (present: "
                          f"{'; '.join(labels) or 'none'})")
    # wgpu-py logs "Forcing backend: X" as a warning when WGPU_BACKEND_TYPE is set: the user asked for it,
    # and a second stderr line would break both the TUI and the one-line error below.
    log = logging.getLogger("wgpu")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        adapter = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
    except Exception as e:
        adapter = None
        err = str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        err = "request_adapter returned nothing"
    finally:
        log.setLevel(level)
    if adapter is None:
        raise LlmtopError(f"--backend wgpu: no WebGPU adapter ({err}); install a Vulkan/Metal driver, "
                          "e.g. mesa-vulkan-drivers")
    return adapter


def adapter_label(adapter: Any) -> str:
    """The adapter as errors and --adapter name it: "device (backend)", e.g.
    "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)"."""
    info = adapter.info
    return f"{info.get('device', '?')} ({info.get('backend_type', '?')})"


def quiet_mesa() -> None:
    # Mesa's WSI layer prints an XDG_RUNTIME_DIR error on headless machines, which would tear the TUI.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        d = os.path.join(tempfile.gettempdir(), f"llmtop-xdg-{os.getuid()}")
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = d


def lavapipe_threads() -> None:
    """Run lavapipe's compute dispatches inline on small machines (LP_NUM_THREADS=0) unless the user chose.

    lavapipe hands every dispatch to LP_NUM_THREADS worker threads (default: one per CPU) and waits for
    them. Measured on a loaded 2-CPU VM: that handoff costs 50-250 µs per dispatch (an empty dispatch)
    against 4-20 µs inline, a SmolLM2 decode step is ~450 dispatches, and the second core is often busy:
    SmolLM2 decode 7.0-7.9 tok/s inline vs 5.7-6.1 with 2 worker threads (benchmarks/bench_wgpu_decode.py),
    60-token prefill 2.6-3.0 s vs 3.5 s. The cost: kernels with few workgroups and much work, such as
    long-context decode attention, run on one core (21 vs 16 ms per 1k tokens of context per layer);
    set LP_NUM_THREADS to choose. llvmpipe reads the variable when the Vulkan driver enumerates its device,
    i.e. before the first adapter request in the process.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    if "LP_NUM_THREADS" not in os.environ and cpus <= 2:
        os.environ["LP_NUM_THREADS"] = "0"


def kv_cache_layout(max_ctx: int, batch: int, max_tex: int, opengl: bool) -> tuple[int, int, int]:
    """(positions per layer, layers per sequence, array layers to allocate) of a KV cache texture.

    The cache is bound as a `texture_2d_array`. WebGPU on OpenGL cannot say so when the texture is made:
    wgpu-hal's GL backend guesses the view dimension from the layer count (1 -> 2-D, 6 -> cube, a
    multiple of 6 above that -> cube array) and a 2d-array view of such a texture reads and writes the
    wrong texels: llvmpipe-over-GL decoded garbage this way with exit 0. So a sequence always spans at
    least two layers (the same memory, split in two), and on OpenGL a count that would read as a cube
    gets one spare layer.
    """
    seg = min(max_ctx, max_tex)
    nseg = -(-max_ctx // seg)
    if batch * nseg == 1:
        seg, nseg = -(-max_ctx // 2), 2
    n_layers = batch * nseg
    if opengl and n_layers % 6 == 0:
        n_layers += 1
    return seg, nseg, n_layers


def open_device(adapter: Any, dtype: str, timing: str) -> tuple[Any, frozenset[str], str]:
    """(device, enabled features, timing mode) for `adapter`: shader-f16 for float16, and the timestamp
    features of the timing mode, "auto" preferring timestamps inside one pass."""
    if timing not in TIMINGS:
        raise LlmtopError(f"wgpu backend: timing must be auto/inside-pass/per-pass/off, not {timing!r}")
    feats = set(adapter.features)
    want: list[str] = []
    if dtype == "float16":
        if "shader-f16" not in feats:
            raise LlmtopError(f"--backend wgpu --dtype float16: adapter {adapter.info['device']!r} "
                              "lacks shader-f16")
        want.append("shader-f16")
    if timing == "off" or "timestamp-query" not in feats:
        mode = "off"
    elif timing == "auto":
        mode = "inside-pass" if "timestamp-query-inside-passes" in feats else "per-pass"
    else:
        mode = timing
    if mode == "inside-pass" and "timestamp-query-inside-passes" not in feats:
        raise LlmtopError("wgpu backend: adapter lacks timestamp-query-inside-passes")
    if mode != "off":
        want.append("timestamp-query")
    if mode == "inside-pass":
        want.append("timestamp-query-inside-passes")
    if "timestamp-query-inside-encoders" in feats:
        want.append("timestamp-query-inside-encoders")  # lets benchmarks time buffer copies
    lim = adapter.limits
    limits = {k: lim[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size",
                                  "max-storage-buffers-per-shader-stage", "max-texture-dimension-2d",
                                  "max-compute-workgroup-storage-size") if k in lim}
    device = adapter.request_device_sync(required_features=want, required_limits=limits)
    return device, frozenset(want), mode


def timestamp_period(extras: Any, device: Any) -> float:
    """ns per timestamp tick; 1.0 on lavapipe, other values on e.g. some Vulkan/D3D drivers."""
    try:
        period = float(extras.lib.wgpuQueueGetTimestampPeriod(device.queue._internal))
    except Exception:
        return 1.0
    return period if period > 0 and math.isfinite(period) else 1.0


__all__ = ["TIMINGS", "adapter_label", "enumerate_adapters", "kv_cache_layout", "lavapipe_threads",
           "list_adapters", "open_device", "pick_adapter", "quiet_mesa", "timestamp_period"]
