"""The CUDA code paths of the torch backend, exercised on CPU where they can be, on a GPU where they must be.

On CPU: TorchOps configured for CUDA I/O (`_configure(cuda=True)`: pinned non-blocking H2D copies, read-back
through one event wait, K/V expanded for fused attention, warm-up) runs a real generation with pinned memory
and CUDA events faked, while every host<->device transfer and host scalar read is recorded: a blocking
`.to(device)`, a `.cpu()`, an `.item()` or a `bool(tensor)` inside a step fails the test. The event recorder
is driven with fake events. With a GPU: the same steps under `torch.cuda.set_sync_debug_mode("error")`.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_torch_backend import tiny  # noqa: E402

from llmtop.events import DECODE, NO_LAYER, PREFILL  # noqa: E402
from llmtop.kernels import cuda_events, torch_sampling  # noqa: E402
from llmtop.kernels.base import KernelRecorder, SamplingParams  # noqa: E402
from llmtop.kernels.cuda_events import CudaEventRecorder  # noqa: E402
from llmtop.kernels.torch_backend import TorchOps, events_per_step, resolve_dtype  # noqa: E402
from llmtop.model.engine import Engine  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


class FakeEvent:
    """torch.cuda.Event on a CPU-only machine: record() reads the host clock (and remembers its stream);
    `done` = False holds query() at not-complete, like a GPU that is behind."""

    created = 0
    done = True

    def __init__(self, enable_timing: bool = False) -> None:
        FakeEvent.created += 1
        self.t: int | None = None
        self.stream = None
        self.records = 0
        self.syncs = 0

    def record(self, stream=None) -> None:
        self.t = time.perf_counter_ns()
        self.stream = stream
        self.records += 1

    def query(self) -> bool:
        return self.t is not None and FakeEvent.done

    def synchronize(self) -> None:
        self.syncs += 1

    def elapsed_time(self, end) -> float:
        assert self.query() and end.query(), "elapsed_time on an incomplete event"
        return (end.t - self.t) / 1e6


class TransferLog:
    """Patches torch so every transfer and host read during a step is recorded (CPU stand-ins for pinned
    memory: pin_memory() returns the tensor itself, marked)."""

    def __init__(self, monkeypatch) -> None:
        self.armed = False
        self.bad: list[str] = []
        self.h2d = 0  # non-blocking copies from pinned memory
        self.pinned: set[int] = set()
        self._keep: list = []  # pinned stand-ins stay alive, so their ids are never reused
        self.readback_waits = 0
        T = torch.Tensor
        orig_to, orig_copy, orig_empty = T.to, T.copy_, torch.empty
        log = self

        def is_device(a) -> bool:
            return isinstance(a, (torch.device, str))

        def to(self, *args, **kwargs):
            if log.armed and (any(is_device(a) for a in args) or "device" in kwargs):
                if not kwargs.get("non_blocking"):
                    log.bad.append(f"blocking .to({args}, {kwargs})")
                elif id(self) not in log.pinned:
                    log.bad.append("non-blocking .to() from pageable memory")
                else:
                    log.h2d += 1
            return orig_to(self, *args, **kwargs)

        def copy_(self, src, non_blocking=False):
            if log.armed and (id(self) in log.pinned or id(src) in log.pinned) and not non_blocking:
                log.bad.append("blocking copy_ to/from pinned memory")
            return orig_copy(self, src, non_blocking)

        def pin_memory(self, *a, **k):
            log.pin(self)
            return self

        def empty(*args, pin_memory=False, **kwargs):
            t = orig_empty(*args, **kwargs)
            if pin_memory:
                log.pin(t)
            return t

        def host_read(name):
            orig = getattr(T, name)

            def f(self, *a, **k):
                if log.armed and not (name == "numpy" and id(self) in log.pinned):
                    log.bad.append(f"host read .{name}()")
                return orig(self, *a, **k)

            return f

        monkeypatch.setattr(T, "to", to)
        monkeypatch.setattr(T, "copy_", copy_)
        monkeypatch.setattr(T, "pin_memory", pin_memory)
        monkeypatch.setattr(torch, "empty", empty)
        for name in ("cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__",
                     "__array__"):
            monkeypatch.setattr(T, name, host_read(name))
        monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: f"stream:{device}")
        orig_sync = FakeEvent.synchronize

        def sync(ev):
            log.readback_waits += 1
            orig_sync(ev)

        monkeypatch.setattr(FakeEvent, "synchronize", sync)
        torch_sampling._SYNC_EVENTS.clear()


    def pin(self, t) -> None:
        self.pinned.add(id(t))
        self._keep.append(t)


def _cuda_io_ops(recorder=None) -> TorchOps:
    ops = TorchOps(recorder or KernelRecorder(enabled=False), device="cpu")
    ops._configure(cuda=True)
    return ops


SAMPLINGS = [SamplingParams(), SamplingParams(temperature=0.8, top_k=5, seed=3),
             SamplingParams(temperature=0.9, seed=4)]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "topk", "probs"])
def test_steps_never_block_on_a_transfer(monkeypatch, sampling):
    """Prefill and decode steps on the CUDA I/O path: ids and positions go up as non-blocking copies from
    pinned memory, results come back through pinned memory and one event wait per step, and nothing reads a
    device scalar on the host; the tokens equal the plain CPU path's."""
    _, lm = tiny("llama3")  # 4 query heads over 2 KV heads: the expanded-K/V prefill runs
    want = Engine(lm, TorchOps(KernelRecorder(enabled=False), device="cpu"), max_batch=2).generate(
        [[5, 17, 33, 2, 9, 60], [7, 8]], 6, sampling=sampling)
    log = TransferLog(monkeypatch)
    eng = Engine(lm, _cuda_io_ops(), max_batch=2)
    assert eng.warmup and not eng.warmed
    steps = []
    log.armed = True

    def on_tokens(step, new, finished):
        steps.append((step, log.h2d, log.readback_waits))

    got = eng.generate([[5, 17, 33, 2, 9, 60], [7, 8]], 6, sampling=sampling, on_tokens=on_tokens)
    log.armed = False
    assert log.bad == []
    assert [g.token_ids for g in got] == [g.token_ids for g in want]
    assert eng.warmed and eng.source_info().extra["warmup"] == "warm"
    # per decode step: ids + positions up (2 copies), one read-back wait
    per_step = np.diff(np.array([(h, w) for _, h, w in steps]), axis=0)
    assert (per_step == [2, 1]).all(), per_step


def test_the_transfer_guard_catches_blocking_copies(monkeypatch):
    """The check above is not vacuous: the pre-fix code paths (a blocking .to(device) of the ids and
    positions, a .cpu() read-back of the token) are caught."""
    _, lm = tiny("llama3")
    log = TransferLog(monkeypatch)
    ops = _cuda_io_ops()
    ops._h2d = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64)).to(ops.device)
    ops._readback = torch_sampling.host_arrays
    eng = Engine(lm, ops, warmup=False)
    log.armed = True
    eng.generate([[5, 17, 33]], 3, chat=False)
    log.armed = False
    assert any(b.startswith("blocking .to(") for b in log.bad)
    assert any(b.startswith("host read .") for b in log.bad)


def test_expanded_gqa_prefill_matches_grouped(monkeypatch):
    """The fused-kernel prefill (K/V repeated to the query heads) equals SDPA's grouped path."""
    _, lm = tiny("qwen")
    ids = np.array([[5, 17, 33, 2, 9, 60, 11]], dtype=np.int32)
    pos = np.arange(7, dtype=np.int32)[None]
    out = {}
    for expand in (False, True):
        ops = TorchOps(KernelRecorder(enabled=False), device="cpu")
        eng = Engine(lm, ops, warmup=False)
        ops._expand_gqa = expand
        ops.alloc_kv_cache(1, 16)
        with torch.inference_mode():
            out[expand] = ops.to_host(eng.model.forward(ids, pos, np.array([6]), PREFILL))
    np.testing.assert_allclose(out[True], out[False], rtol=1e-5, atol=1e-5)


def test_dtype_auto_is_bf16_on_cuda_fp32_on_cpu():
    assert resolve_dtype("cuda", "auto") == "bfloat16" and resolve_dtype("cpu", "auto") == "float32"
    assert resolve_dtype("cuda", "float16") == "float16"
    assert TorchOps(dtype="auto").dtype_name == "float32"


# -- the event recorder ------------------------------------------------------------------------------------
@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(cuda_events, "_current_stream", lambda device: f"stream:{device}")
    FakeEvent.done = True
    yield
    FakeEvent.done = True


def _timed_cuda_ops(pool: int = 0) -> TorchOps:
    rec = CudaEventRecorder(pool_size=pool, device=0)
    ops = TorchOps(rec, device="cpu")
    ops._configure(cuda=True)
    ops._bind(timed=True, cuda=True)
    return ops


def test_engine_events_shared_between_ops(monkeypatch, fake_cuda):
    """Timed CUDA ops with fake events: n + 1 events for n consecutive ops (plus the cuts), one event pool
    sized from the model and reused, rows resolved to host times inside their step, Σ kernel <= wall."""
    _, lm = tiny("llama3")
    ops = _timed_cuda_ops()
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: t)
    monkeypatch.setattr(torch_sampling, "readback_cuda", torch_sampling.host_arrays)
    ops._readback = torch_sampling.host_arrays
    eng = Engine(lm, ops, warmup=False)
    rec = ops.recorder
    L = lm.config.n_layers
    assert rec.pool_size == events_per_step(L) * cuda_events.STEPS_IN_FLIGHT
    created = FakeEvent.created
    recorded = []
    orig_end = rec.end_step

    def end_step(pending=None):
        recorded.append(len(rec._events))
        orig_end(pending)

    rec.end_step = end_step
    eng.generate([[5, 17, 33, 2, 9, 60]], 5, chat=False)
    n_ops = 1 + 15 * L + 3
    # prefill: anchor, one end per op, 2 cut starts (position tables, last-token gather); decode: 1 cut
    assert recorded[0] == 1 + n_ops + 2 and recorded[1:] == [1 + n_ops + 1] * 4
    assert all(r <= events_per_step(L) - 1 for r in recorded)  # (+ the end event)
    b = rec.drain()
    assert FakeEvent.created == created  # the pool was reused, never grown
    assert len(rec._pool) == rec.pool_size
    assert len(b.steps) == 5 and (b.steps["kernel_ns"] > 0).all()
    for s in b.steps:
        ks = b.kernels[b.kernels["step"] == s["step"]]
        assert len(ks) == n_ops and (ks["dur_ns"] >= 0).all()
        assert ks["dur_ns"].sum() == s["kernel_ns"] <= s["dur_ns"]
        assert (ks["start_ns"] >= s["start_ns"]).all()
        assert (ks["start_ns"] + ks["dur_ns"] <= s["start_ns"] + s["dur_ns"]).all()
        # shared events: each op starts where the previous one ended, except after a cut
        ends = ks["start_ns"][:-1] + ks["dur_ns"][:-1]
        assert (ks["start_ns"][1:] >= ends).all()
        assert (ks["start_ns"][1:] == ends).mean() > 0.9


def test_recorder_uses_the_step_stream_and_waits_for_the_gpu(fake_cuda):
    rec = CudaEventRecorder(pool_size=64, device=3)
    nid, opc = rec.ids["matmul:q_proj"]
    rec.begin_step(DECODE, 0, 1, 1, 10)
    s = rec.start()
    e = rec.mark()
    rec.rows.append((nid, opc, 0, s, e, 1, 64, 64))
    FakeEvent.done = False  # the GPU has not reached the end event yet
    rec.end_step()
    assert all(ev.stream == "stream:3" for ev in rec._done[0][4][0])  # the cached stream of device 3
    assert rec.drain() is None  # not resolved, never waited for
    FakeEvent.done = True
    b = rec.drain()
    assert len(b.steps) == 1 and len(b.kernels) == 1


def test_step_wall_is_the_gpu_span_when_the_gpu_runs_longer(fake_cuda):
    """Agent case: the forward returns before its kernels finish; the step wall is max(host, GPU span)."""
    rec = CudaEventRecorder(pool_size=64)
    nid, opc = rec.ids["matmul:lm_head"]
    rec.begin_step(PREFILL, 0, 8, 1, 8)
    s, e = rec.mark(), rec.mark()
    rec.rows.append((nid, opc, NO_LAYER, s, e, 8, 64, 64))
    rec.end_step()
    events, _, _, ends, _, _ = rec._done[0][4]
    events[e].t += 50_000_000  # the kernel ends 50 ms after the host moved on
    events[ends[0]].t = events[e].t + 1000
    b = rec.drain()
    st = b.steps[0]
    assert st["dur_ns"] >= 50_000_000 and b.kernels["dur_ns"][0] <= st["dur_ns"]


def test_pool_runs_dry_steps_become_untimed_and_are_counted(fake_cuda):
    """No drain for a while: the pool is never grown; steps that find it empty keep wall and tokens but lose
    their kernels (kernel_ns -1), counted in dropped_steps / dropped_rows; later steps are timed again."""
    rec = CudaEventRecorder(pool_size=0)
    rec.reserve(events_per_step=4, steps_in_flight=3)  # 12 events: 3 steps of anchor + 2 ops + end
    nid, opc = rec.ids["silu_mul"]
    created = FakeEvent.created

    def step(i):
        rec.begin_step(DECODE, i, 1, 1, 5 + i)
        for _ in range(2):
            s = rec.start()
            e = rec.mark()
            rec.rows.append((nid, opc, 0, s, e, 0, 0, 0))
        rec.end_step()

    for i in range(5):
        step(i)
    assert FakeEvent.created == created and rec.dropped_steps == 2 and rec.dropped_rows == 4
    b = rec.drain()
    assert b.steps["step"].tolist() == [0, 1, 2, 3, 4]
    assert b.steps["kernel_ns"].tolist()[3:] == [-1, -1] and (b.steps["kernel_ns"][:3] > 0).all()
    assert len(b.kernels) == 3 * 2 and len(rec._pool) == 12
    step(5)
    b = rec.drain()
    assert b.steps["kernel_ns"][0] > 0 and rec.dropped_steps == 2


def test_events_on_two_devices_resolve_against_their_own_anchor(fake_cuda):
    rec = CudaEventRecorder(pool_size=32, device=0)
    ln1 = rec.lane(1)
    assert rec.devices == [0, 1] and len(ln1.pool) >= 32
    nid, opc = rec.ids["matmul:down_proj"]
    rec.begin_step(DECODE, 0, 1, 1, 5)
    s0, e0 = rec.mark(), rec.mark()
    rec.rows.append((nid, opc, 0, s0, e0, 1, 64, 64))
    s1, e1 = rec.mark_on(ln1), rec.mark_on(ln1)
    rec.rows.append((nid, opc, 1, s1, e1, 1, 64, 64))
    rec.end_step()
    events, foreign, _, _, _, _ = rec._done[0][4]
    assert {events[i].stream for i in foreign} == {"stream:1"}
    assert {events[i].stream for i in range(len(events)) if i not in foreign} == {"stream:0"}
    b = rec.drain()
    assert len(b.kernels) == 2 and (b.kernels["dur_ns"] >= 0).all()
    assert b.kernels["dur_ns"].sum() <= b.steps["dur_ns"][0]
    assert len(ln1.pool) >= 32 and len(rec._pool) == 32


# -- on a GPU ------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU (torch.cuda is unavailable)")
@pytest.mark.parametrize("timed", [True, False], ids=["timed", "untimed"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_decode_steps_do_not_synchronize(timed, dtype):
    """`torch.cuda.set_sync_debug_mode("error")` over every decode step (and, separately, the prefill):
    the only wait is the sampled token's event wait, which the sync debug mode does not count."""
    _, lm = tiny("llama3")
    ops = TorchOps(KernelRecorder(enabled=timed), device="cuda", dtype=dtype)
    eng = Engine(lm, ops, max_batch=2)
    eng.generate([[5, 17, 33, 2, 9, 60]], 2, chat=False)  # warm-up and first run outside the check

    def on_tokens(step, new, finished):
        if step == 0:
            torch.cuda.set_sync_debug_mode("error")

    try:
        eng.generate([[5, 17, 33, 2, 9, 60], [7, 8]], 12, chat=False, on_tokens=on_tokens)
        torch.cuda.set_sync_debug_mode("error")
        eng.generate([[5, 17, 33, 2, 9, 60, 4, 4, 4]], 1, chat=False)  # a prefill (with the gather)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ops.synchronize()
    if timed:
        b = ops.recorder.drain()
        assert b is not None and (b.steps["kernel_ns"] > 0).all()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU (torch.cuda is unavailable)")
def test_cuda_bf16_default_tf32_and_warm_source():
    _, lm = tiny("qwen")
    ops = TorchOps(KernelRecorder(), device="cuda", dtype="auto")
    assert ops.dtype_name == "bfloat16" and ops.device.index is not None
    eng = Engine(lm, ops)
    src = eng.source_info()
    assert src.extra["warmup"] == "warm" and src.timing.endswith(", warm")
    assert len(src.extra["device_uuid"].replace("-", "")) == 32  # 16 bytes in hex
    eng.generate(["hi"], 3, chat=False)
    assert eng.warmed
    f32 = TorchOps(KernelRecorder(), device="cuda", dtype="float32")
    assert f32.tf32 and torch.backends.cuda.matmul.allow_tf32
