"""A TEST STAND-IN for AMD XRT's Python binding `pyxrt`: no NPU, no driver, used only by llmtop's tests.

Never a backend: it lives under tests/ and is put on PYTHONPATH by the tests that drive a fake NPU decode
loop through it. It implements the binding's surface (from XRT's pyxrt.cpp / pyxrt.pyi and from how
mlir-air and mlir-aie call it): device, xclbin, uuid, elf, module,
hw_context, kernel (and ext.kernel), run, bo (and ext.bo, with a stable `map()` buffer), runlist, and the
enums (xclBOSyncDirection, ert_cmd_state, bo.flags with its class attributes).

Timing, like the real binding: `run.start()` / `kernel(...)` only submit; the "NPU" then runs for the
kernel's time and `wait()` / `wait2()` block until it is done, holding the GIL (the binding does not
release it there), as `sync()` does for its cache flush / DMA. Holding it is a busy wait that spends most of
its time inside single C calls (which never switch threads), never `time.sleep` (which releases the GIL).
The set-up calls that release the GIL in the binding (hw_context, register_xclbin, kernel construction)
sleep. Kernel times come from RUN_MS (the seed profile's NPU Run per call for mlir-air's llama32_1b) times
$FAKE_PYXRT_SCALE (default 1).
"""

from __future__ import annotations

import enum
import itertools
import os
import time
from typing import Any

import numpy as np

FAKE = True  # tests check they got the stand-in
SCALE = float(os.environ.get("FAKE_PYXRT_SCALE", "1"))
# NPU Run ms per call (mlir-air llama32_1b on NPU2, docs/profile.md / PROFILE.html numbers)
RUN_MS = {"rms_gemv_rope": 0.83, "o_gemv_ffn": 3.64, "lm_head_gemv": 13.5, "rms_gemms_rope": 6.5,
          "attention_bf16": 20.1, "o_ffn": 39.8}
DEFAULT_RUN_MS = 0.5
SYNC_FIXED_US = 8.0  # a cache flush / invalidate costs this much at least
SYNC_GB_S = 12.0  # and this much per byte beyond it
LOAD_MS = {"hw_context": 30.0, "register_xclbin": 20.0, "kernel": 5.0}
XCL_BO_FLAGS_NONE = 0

_now = time.perf_counter_ns


def _calibrate() -> float:
    """Items per ns that sum(repeat(0, n)) consumes: a C loop that never lets another thread run."""
    n = 200_000
    best = float("inf")
    for _ in range(3):
        t0 = _now()
        sum(itertools.repeat(0, n))
        best = min(best, _now() - t0)
    return n / max(best, 1)


_rate = [_calibrate()]


def _hold(ns: float) -> None:
    """Busy-wait `ns` with the GIL held. Nearly all of it is one C call (sum over a repeat iterator, sized
    from the measured rate, which each hold refines): between bytecodes a thread that has waited for the
    GIL longer than the switch interval would get it, inside one C call it never does. A short Python spin
    ends the wait on time."""
    end = _now() + int(ns)
    left = end - _now()
    if left > 50_000:
        n = int(left * 0.97 * _rate[0])
        t0 = _now()
        sum(itertools.repeat(0, n))
        dt = _now() - t0
        if dt > 0:
            _rate[0] = 0.7 * _rate[0] + 0.3 * (n / dt)
    while _now() < end:
        pass


# -- enums (pybind11 enums: int() works, .name and .value exist) ------------------------------------------
class xclBOSyncDirection(enum.IntEnum):  # the binding spells its names this way
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1
    XCL_BO_SYNC_BO_GMIO_TO_AIE = 2
    XCL_BO_SYNC_BO_AIE_TO_GMIO = 3


class ert_cmd_state(enum.IntEnum):
    ERT_CMD_STATE_NEW = 1
    ERT_CMD_STATE_QUEUED = 2
    ERT_CMD_STATE_COMPLETED = 4
    ERT_CMD_STATE_ERROR = 5
    ERT_CMD_STATE_ABORT = 6
    ERT_CMD_STATE_SUBMITTED = 7
    ERT_CMD_STATE_TIMEOUT = 8
    ERT_CMD_STATE_NORESPONSE = 9
    ERT_CMD_STATE_SKERROR = 10
    ERT_CMD_STATE_SKCRASHED = 11


class xrt_info_device(enum.IntEnum):
    bdf = 0
    name = 3


# -- device, images, contexts -------------------------------------------------------------------------------
class uuid:
    def __init__(self, s: str = "00000000-0000-0000-0000-000000000000") -> None:
        self._s = s

    def to_string(self) -> str:
        return self._s


class device:
    def __init__(self, which: int | str = 0) -> None:
        self.which = which
        self._uuid: uuid | None = None

    def register_xclbin(self, x: xclbin) -> uuid:
        time.sleep(LOAD_MS["register_xclbin"] * SCALE / 1e3)  # releases the GIL in the binding
        self._uuid = x.get_uuid()
        return self._uuid

    def load_xclbin(self, x: Any) -> uuid:
        import warnings

        warnings.warn("load_xclbin is deprecated", DeprecationWarning, stacklevel=2)
        return self.register_xclbin(x if isinstance(x, xclbin) else xclbin(str(x)))

    def get_info(self, what: Any) -> str:
        return "NPU Strix (fake pyxrt)" if int(what) == int(xrt_info_device.name) else "0000:c5:00.1"

    def get_xclbin_uuid(self) -> uuid:
        return self._uuid or uuid()


class _KernelInfo:
    def __init__(self, name: str) -> None:
        self._name = name

    def get_name(self) -> str:
        return self._name

    def get_num_args(self) -> int:
        return 8


class xclbin:
    def __init__(self, path: str) -> None:
        self.path = str(path)

    def get_uuid(self) -> uuid:
        return uuid(f"fake-{abs(hash(self.path)) % 10**8:08d}")

    def get_kernels(self) -> list[_KernelInfo]:
        return [_KernelInfo(os.path.splitext(os.path.basename(self.path))[0] or "MLIR_AIE")]

    def get_mems(self) -> list[Any]:
        return []

    def get_xsa_name(self) -> str:
        return "fake"


class elf:
    def __init__(self, path_or_data: Any, size: int | None = None) -> None:
        self.source = path_or_data


class module:
    def __init__(self, e: elf) -> None:
        self.elf = e

    def get_hw_context(self) -> hw_context:
        return hw_context(device(0))


class program:
    def __init__(self, e: elf) -> None:
        self.elf = e

    def get_partition_size(self) -> int:
        return 4


class hw_context:
    class access_mode(enum.IntEnum):
        exclusive = 0
        shared = 1

    def __init__(self, dev: device | None = None, *args: Any) -> None:
        if dev is not None:
            time.sleep(LOAD_MS["hw_context"] * SCALE / 1e3)  # releases the GIL in the binding
        self._device = dev
        self._args = args

    def get_device(self) -> device | None:
        return self._device

    def get_mode(self) -> Any:
        return hw_context.access_mode.shared

    def add_config(self, e: elf) -> None:
        time.sleep(LOAD_MS["hw_context"] * SCALE / 1e3)


# -- kernels and runs --------------------------------------------------------------------------------------
class kernel:
    class cu_access_mode(enum.IntEnum):
        exclusive = 0
        shared = 1

    def __init__(self, *args: Any) -> None:
        names = [a for a in args if isinstance(a, str)]
        if not names:
            raise TypeError("kernel(hw_context, name): a name is required")
        self.name = names[-1]
        time.sleep(LOAD_MS["kernel"] * SCALE / 1e3)  # releases the GIL in the binding

    def group_id(self, arg_index: int) -> int:
        return int(arg_index)

    def _run_ms(self) -> float:
        short = self.name.split(":", 1)[1] if self.name.startswith("main:") else self.name
        return RUN_MS.get(short, DEFAULT_RUN_MS) * SCALE

    def __call__(self, *args: Any) -> run:
        r = run(self)
        for i, a in enumerate(args):  # the binding casts to bo, then int; anything else still uses an index
            if isinstance(a, (bo, int)):
                r.set_arg(i, a)
        r.start()
        return r


class run:
    def __init__(self, k: kernel | None = None) -> None:
        self.kernel = k
        self.args: dict[int, Any] = {}
        self._done_ns = 0
        self._started = False

    def set_arg(self, index: int, value: Any) -> None:
        self.args[int(index)] = value

    def start(self) -> None:
        if self.kernel is None:
            raise RuntimeError("run without a kernel")
        self._started = True
        self._done_ns = _now() + int(self.kernel._run_ms() * 1e6)  # the NPU runs on its own from now

    def state(self) -> ert_cmd_state:
        if not self._started:
            return ert_cmd_state.ERT_CMD_STATE_NEW
        if _now() >= self._done_ns:
            return ert_cmd_state.ERT_CMD_STATE_COMPLETED
        return ert_cmd_state.ERT_CMD_STATE_SUBMITTED

    def wait(self, timeout_ms: int = 0) -> ert_cmd_state:
        """0 blocks until done; else returns TIMEOUT when it expires. Holds the GIL, like the binding."""
        if not self._started:
            return ert_cmd_state.ERT_CMD_STATE_NEW
        left = self._done_ns - _now()
        if timeout_ms and left > timeout_ms * 1e6:
            _hold(timeout_ms * 1e6)
            return ert_cmd_state.ERT_CMD_STATE_TIMEOUT
        _hold(left)
        return ert_cmd_state.ERT_CMD_STATE_COMPLETED

    def wait2(self, timeout_ms: int | None = None) -> None:
        """None on success; raises (xrt::run::command_error) otherwise."""
        st = self.wait(timeout_ms or 0)
        if st != ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise RuntimeError(f"command error: {st.name}")

    def add_callback(self, *args: Any) -> None:
        pass


class bo:
    normal = 0
    cacheable = 1 << 24
    device_only = 1 << 25
    host_only = 1 << 29
    p2p = 1 << 30
    svm = 1 << 27

    class flags(enum.IntEnum):
        normal = 0
        cacheable = 1 << 24
        device_only = 1 << 25
        host_only = 1 << 29
        p2p = 1 << 30
        svm = 1 << 27

    _next_addr = itertools.count(0x4000_0000, 0x10_0000)

    def __init__(self, owner: Any, size: int, *args: Any) -> None:
        if isinstance(owner, bo):  # sub-buffer: bo(parent, size, offset)
            offset = int(args[0]) if args else 0
            self._mem = owner._mem
            self._off = owner._off + offset
        else:
            self._mem = bytearray(int(size))
            self._off = 0
        self._size = int(size)
        self._view: memoryview | None = None
        self._addr = next(bo._next_addr)

    def size(self) -> int:
        return self._size

    def address(self) -> int:
        return self._addr

    def map(self) -> memoryview:
        """The same writable, zero-copy buffer every time (callers keep numpy views on it)."""
        if self._view is None:
            self._view = memoryview(self._mem)[self._off : self._off + self._size]
        return self._view

    def write(self, buffer: Any, seek: int) -> None:
        src = memoryview(buffer).cast("B")
        n = src.nbytes
        self._mem[self._off + seek : self._off + seek + n] = src
        _hold(n / SYNC_GB_S)

    def read(self, size: int, skip: int) -> np.ndarray:
        out = np.frombuffer(bytes(self._mem[self._off + skip : self._off + skip + size]), dtype=np.int8)
        _hold(size / SYNC_GB_S)
        return out

    def sync(self, direction: Any, size: int | None = None, offset: int = 0) -> None:
        n = self._size if size is None else int(size)
        _hold(SYNC_FIXED_US * 1e3 + n / SYNC_GB_S)


class _ExtBo(bo):
    """ext.bo(device, size[, access]) / ext.bo(hw_context, size[, access]): no group id."""

    def __init__(self, owner: Any, *args: Any) -> None:
        size = next((a for a in args if isinstance(a, int)), 0)
        super().__init__(owner, size)


class _ExtKernel(kernel):
    """ext.kernel(hw_context, name) / ext.kernel(hw_context, module, name)."""


class ext:
    """The `ext` namespace: bo and kernel subclasses."""

    bo = _ExtBo
    kernel = _ExtKernel


class runlist:
    def __init__(self, ctx: hw_context | None = None) -> None:
        self.runs: list[run] = []

    def add(self, r: run) -> None:
        self.runs.append(r)

    def execute(self) -> None:
        t = _now()
        for r in self.runs:  # one after another on the NPU
            r._started = True
            t += int(r.kernel._run_ms() * 1e6) if r.kernel is not None else 0
            r._done_ns = t

    def wait(self, timeout: Any = None) -> None:
        if self.runs:
            _hold(max(r._done_ns for r in self.runs) - _now())


def enumerate_devices() -> int:
    return 1
