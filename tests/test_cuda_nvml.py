"""The GPU gauges (collectors/gpu.py) against a fake NVML: the engine's device chosen by UUID (whatever
CUDA_VISIBLE_DEVICES renumbered), one failing device skipped rather than disabling the collector, and
nvmlShutdown once per init when the collector stops. The real NVML runs in benchmarks/gpu_check.sh."""

from __future__ import annotations

import sys
import types

import pytest

from llmtop.collectors.base import UNAVAILABLE
from llmtop.collectors.gpu import GpuCollector
from llmtop.collectors.queue import BoundedQueue


class NVMLError(Exception):
    pass


def fake_nvml(uuids: list[str], broken: set[int] = frozenset(), lost: set[int] = frozenset(),
              mig: dict[str, int] | None = None) -> types.ModuleType:
    """A pynvml stand-in with len(uuids) GPUs; `broken` fail to open, `lost` answer no query, `mig` maps
    MIG instance UUIDs to their GPU's index."""
    nv = types.ModuleType("pynvml")
    nv.calls = {"init": 0, "shutdown": 0}
    nv.NVML_CLOCK_SM, nv.NVML_TEMPERATURE_GPU = 1, 0
    mig = mig or {}

    class H:
        def __init__(self, i: int, uuid: str) -> None:
            self.i, self.uuid = i, uuid

    def handle(i):
        if i in broken:
            raise NVMLError("Insufficient Permissions")
        return H(i, uuids[i])

    def q(h, value):
        if h.i in lost:
            raise NVMLError("GPU is lost")
        return value

    def by_uuid(u):
        if u in uuids:
            return H(uuids.index(u), u)
        if u in mig:
            return H(1000 + mig[u], u)
        raise NVMLError("Not Found")

    def index(h):
        if h.i >= 1000:
            raise NVMLError("Not Supported")  # a MIG handle has no index of its own
        return h.i

    nv.nvmlInit = lambda: nv.calls.__setitem__("init", nv.calls["init"] + 1)
    nv.nvmlShutdown = lambda: nv.calls.__setitem__("shutdown", nv.calls["shutdown"] + 1)
    nv.nvmlDeviceGetCount = lambda: len(uuids)
    nv.nvmlDeviceGetHandleByIndex = handle
    nv.nvmlDeviceGetHandleByUUID = by_uuid
    nv.nvmlDeviceGetIndex = index
    nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle = lambda h: H(h.i - 1000, uuids[h.i - 1000])
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetUUID = lambda h: h.uuid
    nv.nvmlDeviceGetUtilizationRates = lambda h: q(h, types.SimpleNamespace(gpu=40 + h.i % 1000, memory=7))
    nv.nvmlDeviceGetMemoryInfo = lambda h: q(h, types.SimpleNamespace(used=2 << 30, total=80 << 30))
    nv.nvmlDeviceGetPowerUsage = lambda h: q(h, 250_000)  # mW
    nv.nvmlDeviceGetClockInfo = lambda h, kind: q(h, 1980)
    nv.nvmlDeviceGetTemperature = lambda h, kind: q(h, 51)
    return nv


UUIDS = [f"GPU-{i}aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee" for i in range(4)]


@pytest.fixture
def nvml(monkeypatch):
    def install(*a, **k):
        nv = fake_nvml(*a, **k)
        monkeypatch.setitem(sys.modules, "pynvml", nv)
        return nv

    return install


def test_all_devices_and_units(nvml):
    nv = nvml(UUIDS[:2])
    g = GpuCollector()
    s = g.sample()
    assert [x.source for x in s] == ["gpu0", "gpu1"] and g.device_names == ["NVIDIA H100 80GB HBM3"] * 2
    v = s[0].values
    assert v["power_w"] == 250.0 and v["mem_total_bytes"] == 80 << 30 and v["util_pct"] == 40
    g.close()
    g.close()
    assert nv.calls == {"init": 1, "shutdown": 1}


def test_the_engines_device_by_uuid(nvml):
    """torch reports the UUID without NVML's 'GPU-' prefix; the index NVML gives is kept as the gauge name."""
    nvml(UUIDS)
    g = GpuCollector(uuid=UUIDS[2][4:].upper())
    assert [x.source for x in g.sample()] == ["gpu2"] and g.note == ""
    g.close()
    g = GpuCollector()  # follow() once the engine has said where it runs
    assert g.follow(UUIDS[3]) and [x.source for x in g.sample()] == ["gpu3"]
    g.close()
    g = GpuCollector(devices=[0], uuid=UUIDS[1])  # not opened: found through NVML's UUID lookup
    assert [x.source for x in g.sample()] == ["gpu1"]
    g.close()


def test_unknown_uuid_keeps_every_device_and_says_so(nvml):
    nvml(UUIDS[:2])
    g = GpuCollector(uuid="GPU-ffffffff-0000-0000-0000-000000000000")
    assert len(g.sample()) == 2 and "unknown to NVML" in g.note
    g.close()


def test_a_mig_instance_by_uuid(nvml):
    nvml(UUIDS[:2], mig={"MIG-11111111-2222-3333-4444-555555555555": 1})
    g = GpuCollector(uuid="11111111-2222-3333-4444-555555555555")
    (s,) = g.sample()
    assert s.source == "gpu1" and s.values["util_pct"] == 41
    g.close()


def test_one_failing_device_does_not_disable_the_others(nvml):
    nvml(UUIDS[:3], broken={1}, lost={2})
    g = GpuCollector()
    assert g.available and g.state != UNAVAILABLE
    assert g.skipped == ["GPU 1: Insufficient Permissions"]
    assert [x.source for x in g.sample()] == ["gpu0"]  # the lost GPU answers nothing: no empty sample
    g.close()


def test_unavailable_when_no_device_opens_and_nvml_is_shut_down(nvml):
    nv = nvml(UUIDS[:2], broken={0, 1})
    g = GpuCollector()
    assert g.state == UNAVAILABLE and not g.available and "GPU 0: Insufficient" in g.reason
    assert "\n" not in g.reason and nv.calls == {"init": 1, "shutdown": 1}
    nv = nvml([])
    g = GpuCollector()
    assert g.reason == "no NVIDIA GPU found" and nv.calls["shutdown"] == 1


def test_the_thread_shuts_nvml_down_when_it_stops(nvml):
    nv = nvml(UUIDS[:1])
    g = GpuCollector(interval=0.01)
    g.start(BoundedQueue())
    g.stop()
    g.join(5)
    assert not g.alive and nv.calls == {"init": 1, "shutdown": 1} and g.emitted_events >= 0
