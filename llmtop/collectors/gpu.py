"""NVIDIA GPU gauges via nvidia-ml-py (module pynvml): utilization, memory, power, SM clock, temperature.

Without an NVIDIA GPU the collector is UNAVAILABLE with a one-line reason the pane shows
("pynvml: NVML Shared Library Not Found", "no NVIDIA GPU found", ...).

Which GPU. Given the engine's device UUID (`uuid=`, or `follow(uuid)` once the engine has said which device it
runs on: SourceInfo.extra["device_uuid"]), the collector samples that device only, found by UUID rather than
index, because CUDA_VISIBLE_DEVICES renumbers CUDA's devices but not NVML's. Without one it samples every
device (`devices=` picks NVML indices). A device that fails to open is skipped and named in `skipped`; the
collector is unavailable only when no device opens. NVML is shut down when the collector's thread ends (or
`close()`), once per successful init.
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


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _norm_uuid(u: str) -> str:
    """'GPU-ABCD-...' / 'MIG-...' / bare hex -> lower-case hex, no prefix (torch reports none)."""
    u = _text(u).strip().lower()
    for p in ("gpu-", "mig-"):
        if u.startswith(p):
            u = u[len(p):]
    return u


class GpuCollector(Collector):
    name = "gpu"

    def __init__(self, interval: float = 1.0, devices: list[int] | None = None,
                 uuid: str | None = None) -> None:
        super().__init__()
        self.interval = interval
        self.reason = ""
        self.note = ""  # one line when the engine's device was not found (then every device is sampled)
        self.device_names: list[str] = []
        self.skipped: list[str] = []  # "GPU i: reason" for devices that failed to open
        self._handles: list[tuple[int, Any]] = []
        self._nv, reason = _nvml()
        if self._nv is None:
            self._unavailable(reason)
            return
        nv = self._nv
        try:
            self._count = count = int(nv.nvmlDeviceGetCount())
        except Exception as e:
            self._unavailable(f"pynvml: {e}")
            self.close()
            return
        wanted = range(count) if devices is None else [d for d in devices if 0 <= d < count]
        for i in wanted:
            self._open(i)
        if uuid:
            self.follow(uuid)
        if not self._handles:
            if self.skipped:
                why = "; ".join(self.skipped)
            else:
                why = "no NVIDIA GPU found" if count == 0 else f"no GPU {devices} (have {count})"
            self._unavailable(why)
            self.close()

    def _open(self, i: int) -> None:
        nv = self._nv
        try:
            h = nv.nvmlDeviceGetHandleByIndex(i)
            name = _text(nv.nvmlDeviceGetName(h))
        except Exception as e:  # one bad device (lost, no permission) does not disable the others
            self.skipped.append(f"GPU {i}: {e}")
            return
        self._handles.append((i, h))
        self.device_names.append(name)

    def _unavailable(self, reason: str) -> None:
        self.reason = reason
        self.error = reason
        self.state = UNAVAILABLE
        self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def follow(self, uuid: str | None) -> bool:
        """Sample only the device whose UUID is `uuid` (the engine's, from torch); True when NVML has it. When
        it does not, keep sampling what was opened and say so in `note`."""
        nv = self._nv
        if not uuid or nv is None:
            return False
        want = _norm_uuid(uuid)
        for (i, h), name in zip(list(self._handles), list(self.device_names), strict=True):
            with contextlib.suppress(Exception):
                if _norm_uuid(nv.nvmlDeviceGetUUID(h)) == want:
                    self._handles, self.device_names, self.note = [(i, h)], [name], ""
                    return True
        for prefix in ("GPU-", "MIG-"):  # not opened (devices=), or a MIG instance (not an indexed device)
            try:
                h = nv.nvmlDeviceGetHandleByUUID(prefix + want)
                name = _text(nv.nvmlDeviceGetName(h))
            except Exception:
                continue
            self._handles, self.device_names, self.note = [(self._index_of(h), h)], [name], ""
            return True
        self.note = f"the engine's GPU {uuid} is unknown to NVML: showing every GPU"
        return False

    def _index_of(self, h: Any) -> int:
        """NVML index of a device handle; a MIG instance's is its GPU's (0 when NVML cannot say)."""
        nv = self._nv
        with contextlib.suppress(Exception):
            return int(nv.nvmlDeviceGetIndex(h))
        with contextlib.suppress(Exception):
            return int(nv.nvmlDeviceGetIndex(nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(h)))
        return 0

    def sample(self) -> list[CounterSample]:
        nv = self._nv
        if nv is None:
            return []
        out = []
        for i, h in list(self._handles):
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
            if v:  # a device that answered nothing (lost since it was opened) sends no empty sample
                out.append(CounterSample(f"gpu{i}", t, v))
        return out

    def run(self) -> None:
        t0 = time.thread_time()
        try:
            while True:
                for s in self.sample():
                    self.emit(s)
                self.account_cpu(t0)
                if self.wait(self.interval):
                    break
        finally:
            self.close()

    def close(self) -> None:
        """nvmlShutdown, once (NVML counts inits); sampling stops."""
        nv, self._nv = self._nv, None
        if nv is not None:
            with contextlib.suppress(Exception):
                nv.nvmlShutdown()
