"""NVIDIA GPU gauges via nvidia-ml-py (module pynvml): utilization, memory, power, SM clock, temperature.

Without an NVIDIA GPU the collector is UNAVAILABLE with a one-line reason the pane shows
("pynvml: NVML Shared Library Not Found", "no NVIDIA GPU found", ...).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from llmtop.collectors.base import UNAVAILABLE, Collector
from llmtop.events import CounterSample


def _nvml() -> tuple[Any | None, str]:
    try:
        import pynvml
    except ImportError as e:
        return None, f"nvidia-ml-py not installed ({e})"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # pynvml.NVMLError and OSError subclasses
        return None, f"pynvml: {e}"
    return pynvml, ""


class GpuCollector(Collector):
    name = "gpu"

    def __init__(self, interval: float = 1.0, devices: list[int] | None = None) -> None:
        super().__init__()
        self.interval = interval
        self.reason = ""
        self.device_names: list[str] = []
        self._handles: list[tuple[int, Any]] = []
        self._nv, reason = _nvml()
        if self._nv is None:
            self._unavailable(reason)
            return
        nv = self._nv
        try:
            count = nv.nvmlDeviceGetCount()
            wanted = range(count) if devices is None else [d for d in devices if 0 <= d < count]
            for i in wanted:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                self._handles.append((i, h))
                name = nv.nvmlDeviceGetName(h)
                self.device_names.append(name.decode() if isinstance(name, bytes) else str(name))
        except Exception as e:
            self._unavailable(f"pynvml: {e}")
            return
        if not self._handles:
            self._unavailable("no NVIDIA GPU found" if count == 0 else f"no GPU {devices} (have {count})")
            self.close()

    def _unavailable(self, reason: str) -> None:
        self.reason = reason
        self.error = reason
        self.state = UNAVAILABLE
        self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def sample(self) -> list[CounterSample]:
        nv = self._nv
        assert nv is not None
        out = []
        for i, h in self._handles:
            t = time.perf_counter_ns()
            v: dict[str, float] = {}
            # Each query on its own: consumer GPUs and MIG slices lack some of them.
            for key, fn in (
                ("util_pct", lambda h=h: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                ("mem_util_pct", lambda h=h: nv.nvmlDeviceGetUtilizationRates(h).memory),
                ("mem_used_bytes", lambda h=h: nv.nvmlDeviceGetMemoryInfo(h).used),
                ("mem_total_bytes", lambda h=h: nv.nvmlDeviceGetMemoryInfo(h).total),
                ("power_w", lambda h=h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),  # reported in mW
                ("sm_clock_mhz", lambda h=h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                ("temp_c", lambda h=h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            ):
                try:
                    v[key] = float(fn())
                except Exception:  # NVMLError_NotSupported and friends: leave the gauge out
                    continue
            out.append(CounterSample(f"gpu{i}", t, v))
        return out

    def run(self) -> None:
        t0 = time.thread_time()
        while True:
            for s in self.sample():
                self.emit(s)
            self.account_cpu(t0)
            if self.wait(self.interval):
                break

    def close(self) -> None:
        if self._nv is not None:
            with contextlib.suppress(Exception):
                self._nv.nvmlShutdown()
            self._nv = None
