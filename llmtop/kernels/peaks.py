"""Device peaks for the roofline columns: `device_peak` = {bw_gbps, flops_gflops, dtype, source}.

- CPU (torch): measured once per machine, thread count, torch version and dtype by a short STREAM-like
  triad (a = b + s c on arrays far larger than the caches; bytes = 3 N e) and a large-matmul probe
  (2 n^3 flops), best of a few repeats each, ≤ ~2 s; cached in $XDG_CACHE_HOME/llmtop/peaks.json.
  `source`: "measured" (or "measured (cached)").
- CUDA: the vendor's dense spec of a known part (KNOWN_GPUS, matched on torch's device name), else
  computed from the device's properties: memory clock × 2 (DDR) × bus width / 8, and SMs × SM clock ×
  FLOP per clock per SM for the compute capability and dtype (FLOP_PER_CLK_SM). Not verified on a GPU
  here: no device was lent.
- `--peak BW,FLOPS` (GB/s, GFLOP/s) overrides either: `source` "--peak".
Imported traces look their `deviceProperties` name up in the same table (known_gpu_peak).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from llmtop.errors import UsageError

# name substrings (lower case, most specific first) -> (bw GB/s, {dtype: dense TFLOP/s}); vendor specs.
KNOWN_GPUS: list[tuple[tuple[str, ...], float, dict[str, float]]] = [
    (("h200",), 4800, {"float32": 67, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4}),
    (("h100", "pcie"), 2000, {"float32": 51.2, "tf32": 378, "bfloat16": 756.5, "float16": 756.5}),
    (("h100", "nvl"), 3900, {"float32": 60, "tf32": 417.5, "bfloat16": 835, "float16": 835}),
    (("h100",), 3350, {"float32": 67, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4}),
    (("a100", "80gb", "pcie"), 1935, {"float32": 19.5, "tf32": 156, "bfloat16": 312, "float16": 312}),
    (("a100", "80gb"), 2039, {"float32": 19.5, "tf32": 156, "bfloat16": 312, "float16": 312}),
    (("a100",), 1555, {"float32": 19.5, "tf32": 156, "bfloat16": 312, "float16": 312}),
    (("l40s",), 864, {"float32": 91.6, "tf32": 183, "bfloat16": 362, "float16": 362}),
    (("l4",), 300, {"float32": 30.3, "tf32": 60, "bfloat16": 121, "float16": 121}),
    (("a10",), 600, {"float32": 31.2, "tf32": 62.5, "bfloat16": 125, "float16": 125}),
    (("t4",), 320, {"float32": 8.1, "float16": 65}),
    (("v100",), 900, {"float32": 15.7, "float16": 125}),
    (("rtx 4090",), 1008, {"float32": 82.6, "tf32": 82.6, "bfloat16": 165.2, "float16": 165.2}),
    (("rtx 3090",), 936, {"float32": 35.6, "tf32": 35.6, "bfloat16": 71, "float16": 71}),
    (("mi300x",), 5300, {"float32": 163.4, "tf32": 653.7, "bfloat16": 1307.4, "float16": 1307.4}),
    (("mi250",), 3277, {"float32": 95.7, "bfloat16": 383, "float16": 383}),
]

# compute capability major*10+minor -> {dtype: dense FLOP per clock per SM} (fp32: FMA = 2 FLOP on CUDA
# cores; 16-bit: tensor cores with fp32 accumulation; tf32 half of that), for parts not in KNOWN_GPUS.
FLOP_PER_CLK_SM: dict[int, dict[str, int]] = {
    70: {"float32": 128, "float16": 1024},
    75: {"float32": 128, "float16": 1024},
    80: {"float32": 128, "tf32": 1024, "bfloat16": 2048, "float16": 2048},
    86: {"float32": 256, "tf32": 256, "bfloat16": 512, "float16": 512},
    89: {"float32": 256, "tf32": 512, "bfloat16": 1024, "float16": 1024},
    90: {"float32": 256, "tf32": 2048, "bfloat16": 4096, "float16": 4096},
}

PROBE_TRIAD_ELEMS = 1 << 23  # 8 Mi elements x 3 arrays x 4 bytes = 96 MiB: far past any L3
PROBE_MATMUL_N = 1024
PROBE_BUDGET_S = 1.8


def peak(bw_gbps: float, flops_gflops: float, dtype: str, source: str) -> dict[str, Any]:
    return {"bw_gbps": float(bw_gbps), "flops_gflops": float(flops_gflops), "dtype": dtype, "source": source}


def parse_peak(text: str, dtype: str = "") -> dict[str, Any]:
    """`--peak BW,FLOPS` (GB/s, GFLOP/s) -> a device_peak; UsageError when it is not two positive numbers."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        bw, fl = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--peak wants BW,FLOPS in GB/s and GFLOP/s (e.g. 20,400), got {text!r}") from None
    if not (0 < bw < 1e7 and 0 < fl < 1e9):
        raise UsageError(f"--peak values must be positive GB/s and GFLOP/s, got {text!r}")
    return peak(bw, fl, dtype, "--peak")


def known_gpu_peak(name: str, dtype: str, tf32: bool = False) -> dict[str, Any] | None:
    """The spec peak of a known part by its name (torch's / deviceProperties' / NVML's), or None."""
    low = name.lower()
    want = "tf32" if dtype == "float32" and tf32 else dtype
    for keys, bw, flops in KNOWN_GPUS:
        if all(k in low for k in keys):
            fl = flops.get(want) or flops.get(dtype) or flops.get("float32")
            if fl is None:
                return None
            return peak(bw, fl * 1000.0, want, f"spec: {' '.join(keys)}")
    return None


def gpu_peak_from_properties(sms: int, sm_clock_mhz: float, mem_clock_mhz: float, bus_width_bits: int,
                             cc: tuple[int, int], dtype: str, tf32: bool = False) -> dict[str, Any] | None:
    """A peak computed from the device's own numbers (parts not in KNOWN_GPUS)."""
    want = "tf32" if dtype == "float32" and tf32 else dtype
    per = FLOP_PER_CLK_SM.get(cc[0] * 10 + cc[1]) or FLOP_PER_CLK_SM.get(cc[0] * 10)
    if not per or sms <= 0 or sm_clock_mhz <= 0 or mem_clock_mhz <= 0 or bus_width_bits <= 0:
        return None
    f = per.get(want) or per.get("float32", 0)
    bw = mem_clock_mhz * 1e6 * 2 * bus_width_bits / 8 / 1e9
    return peak(bw, sms * sm_clock_mhz * 1e6 * f / 1e9, want, "computed: SMs x clock, memory clock x bus")


def cuda_peak(device: int, dtype: str, tf32: bool = False) -> dict[str, Any] | None:  # pragma: no cover
    """The peak of CUDA device `device` (unverified here: no GPU was lent to this project's sessions)."""
    import torch

    name = torch.cuda.get_device_name(device)
    known = known_gpu_peak(name, dtype, tf32)
    if known is not None:
        return known
    p = torch.cuda.get_device_properties(device)
    sm_mhz = mem_mhz = 0.0
    bus = int(getattr(p, "memory_bus_width", 0) or 0)
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(device)
            sm_mhz = float(pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM))
            mem_mhz = float(pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM))
            bus = bus or int(pynvml.nvmlDeviceGetMemoryBusWidth(h))
        finally:
            pynvml.nvmlShutdown()
    mem_mhz = mem_mhz or float(getattr(p, "memory_clock_rate", 0) or 0) / 1000.0
    sm_mhz = sm_mhz or float(getattr(p, "clock_rate", 0) or 0) / 1000.0
    return gpu_peak_from_properties(int(p.multi_processor_count), sm_mhz, mem_mhz, bus, (p.major, p.minor),
                                    dtype, tf32)


# -- CPU probe -----------------------------------------------------------------------------------------
def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmtop" / "peaks.json"


def _best(fn: Any, repeats: int, deadline: float) -> float:
    """The shortest of up to `repeats` timed calls (after one untimed), stopping at `deadline`."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return best


def probe_cpu(dtype: str = "float32", budget_s: float = PROBE_BUDGET_S) -> dict[str, Any]:
    """Measure this CPU's streaming bandwidth (torch triad) and matmul throughput in `dtype` (torch.mm),
    with torch's current thread count."""
    import torch

    tdt = getattr(torch, dtype)
    deadline = time.perf_counter() + budget_s
    n = PROBE_TRIAD_ELEMS
    bc = torch.ones(n, dtype=torch.float32), torch.full((n,), 2.0, dtype=torch.float32)
    out_a = torch.empty(n, dtype=torch.float32)
    t_triad = _best(lambda: torch.add(bc[0], bc[1], alpha=3.0, out=out_a), 8, deadline - budget_s / 2)
    bw = 3 * n * 4 / t_triad / 1e9
    m = PROBE_MATMUL_N
    x, y = torch.randn(m, m).to(tdt), torch.randn(m, m).to(tdt)
    out = torch.empty(m, m, dtype=tdt)
    t_mm = _best(lambda: torch.mm(x, y, out=out), 6, deadline)
    return peak(bw, 2 * m**3 / t_mm / 1e9, dtype, "measured")


def cpu_peak(device_name: str, dtype: str = "float32", *, cache: bool = True) -> dict[str, Any]:
    """probe_cpu, cached per machine (device name with its thread count), torch version and dtype."""
    import torch

    key = f"{device_name}|torch {torch.__version__}|{dtype}"
    path = _cache_path()
    if cache:
        with contextlib.suppress(OSError, ValueError):
            got = json.loads(path.read_text(encoding="utf-8")).get(key)
            if isinstance(got, dict) and {"bw_gbps", "flops_gflops"} <= set(got):
                return {**got, "source": "measured (cached)"}
    p = probe_cpu(dtype)
    if cache:
        with contextlib.suppress(OSError, ValueError):
            path.parent.mkdir(parents=True, exist_ok=True)
            old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            old = old if isinstance(old, dict) else {}
            old[key] = p
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(old, indent=1), encoding="utf-8")
            os.replace(tmp, path)  # atomic: two processes probing at once never leave half a file
    return p


__all__ = ["FLOP_PER_CLK_SM", "KNOWN_GPUS", "cpu_peak", "cuda_peak", "gpu_peak_from_properties",
           "known_gpu_peak", "parse_peak", "peak", "probe_cpu"]
