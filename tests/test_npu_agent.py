"""The agent's pyxrt instrumentation in-process, on the tests' stand-in binding (tests/fake_pyxrt/): each XRT
invocation as three back-to-back events with its bytes, the other call shapes (xclbin `kernel(...)`, runlists,
buffer traffic with no run), host ops and layer brackets, and step / layer inference."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from npu_stand_in import FAKE_PYXRT_DIR

from llmtop.agent import xrt_hooks
from llmtop.agent.core import Agent
from llmtop.agent.xrt_hooks import infer_layers, repeated_block, square_suffix
from llmtop.events import DECODE, NO_LAYER, OP_CLASS_ID, PREFILL, EventBatch, parse_xrt_name

NPU = OP_CLASS_ID["npu"]


@pytest.fixture(scope="module")
def xrt() -> Any:
    sys.path.insert(0, str(FAKE_PYXRT_DIR))
    try:
        import pyxrt
    finally:
        sys.path.remove(str(FAKE_PYXRT_DIR))
    assert pyxrt.FAKE
    pyxrt.SCALE = 0.02
    return pyxrt


@pytest.fixture
def agent(xrt: Any) -> Iterator[Agent]:
    a = Agent("127.0.0.1:0")  # never started: the test drains its recorder itself
    a.watch_xrt()
    yield a
    xrt_hooks.set_provider(None)
    a.close(timeout=0.1)


def drain(agent: Agent) -> tuple[EventBatch, list[str]]:
    agent.close_steps()
    b = agent.recorder.drain()
    assert b is not None
    return b, agent.names.names


def rows(b: EventBatch, names: list[str]) -> list[tuple[str, int, int, int, int, int, int]]:
    return [(names[int(k["name"])], int(k["step"]), int(k["layer"]), int(k["start_ns"]), int(k["dur_ns"]),
             int(k["m"]), int(k["n"])) for k in b.kernels]


def test_pattern_helpers() -> None:
    assert square_suffix(list("xyzabab")) == 2
    assert square_suffix(list("ababab" + "c" + "ababab" + "c")) == 7
    assert square_suffix(list("abc")) == 0
    assert repeated_block(list("eABABABABf")) == (1, 2, 4)
    assert repeated_block(list("xyzxyzxyzL")) == (0, 3, 3)
    assert repeated_block(list("abcd")) == (0, 0, 0)
    X, H = 0, 1  # an XRT call, a host op
    kinds = [H, X, H, X, H, X, H, X, H, H, X]
    keys = ["embed", "rms", "attn", "o", "attn", "rms", "attn", "o", "attn", "norm", "lm_head"]
    keys[4] = "kv"  # a host op after a layer's last call, before the next layer
    keys[8] = "kv"
    layers, n = infer_layers(kinds, keys)
    assert n == 2
    assert layers == [NO_LAYER, 0, 0, 0, 0, 1, 1, 1, 1, NO_LAYER, NO_LAYER]


def test_stand_in_holds_the_gil_while_waiting(xrt: Any) -> None:
    """Like the real binding, wait() keeps the GIL: another Python thread barely runs meanwhile (it runs
    freely for as long during a GIL-releasing sleep)."""
    xrt.RUN_MS["gil_probe"] = 40.0 / xrt.SCALE  # 40 ms
    k = xrt.kernel(xrt.hw_context(xrt.device(0)), "gil_probe")
    ticks = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ticks[0] += 1

    th = threading.Thread(target=spin, daemon=True)
    th.start()
    try:
        time.sleep(0.01)
        r = xrt.run(k)
        r.start()
        before, t0 = ticks[0], time.perf_counter()
        assert r.wait() == xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED
        held = time.perf_counter() - t0
        during = ticks[0] - before
        mark = ticks[0]
        time.sleep(held)
        free = ticks[0] - mark
    finally:
        stop.set()
        th.join()
    assert held >= 0.035
    assert during < 0.3 * free, (during, free)


def test_xclbin_invocation_three_parts_and_bytes(xrt: Any, agent: Agent) -> None:
    """mlir-aie's older flow: bo.write + sync, kernel(3, instr, n, *bos).wait(), sync + bo.read."""
    dev = xrt.device(0)
    xb = xrt.xclbin("vector_add.xclbin")
    dev.register_xclbin(xb)
    ctx = xrt.hw_context(dev, xb.get_uuid())
    k = xrt.kernel(ctx, "MLIR_AIE")
    instr = xrt.bo(dev, 256, xrt.bo.cacheable, k.group_id(1))
    a = xrt.bo(dev, 4096, xrt.bo.host_only, k.group_id(3))
    out = xrt.bo(dev, 2048, xrt.bo.host_only, k.group_id(4))
    to = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
    frm = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE
    with agent.step("decode", tokens=1, ctx=5):
        a.write(np.ones(1024, np.float32), 0)
        a.sync(to)
        instr.sync(to, 128, 0)
        h = k(3, instr, 32, a, out)
        assert h.wait() == xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED
        out.sync(frm)
        got = out.read(2048, 0)
    assert got.dtype == np.int8 and len(got) == 2048
    b, names = drain(agent)
    rs = rows(b, names)
    inv = [r for r in rs if r[0].startswith("xrt:MLIR_AIE/")]
    assert [r[0] for r in inv] == ["xrt:MLIR_AIE/bo_write", "xrt:MLIR_AIE/npu_run", "xrt:MLIR_AIE/bo_read"]
    w, run, rd = inv
    assert w[3] + w[4] == run[3] and run[3] + run[4] == rd[3]  # back to back
    assert (w[5], w[6]) == (4096 + 128, 2) and (rd[5], rd[6]) == (2048, 1) and run[5:] == (0, 0)
    assert run[4] >= 0.8 * 0.5e6 * xrt.SCALE  # DEFAULT_RUN_MS x SCALE of the stand-in, at least
    step = b.steps[0]
    assert step["phase"] == DECODE and step["kernel_ns"] <= step["dur_ns"]
    # the set-up calls made before the first step: outside every step, named xrt-setup:load/<call>
    setup = {r[0] for r in rs if r[1] == -1}
    assert setup == {f"xrt-setup:load/{c}" for c in ("xclbin", "register_xclbin", "hw_context", "kernel")}
    assert all(k["op_class"] == NPU for k in b.kernels)
    assert agent.source.backend == "npu" and agent.source.extra["npu"]["steps"] == "marked"


def test_runlists_orphans_and_host_ops_inside(xrt: Any, agent: Agent) -> None:
    dev = xrt.device(0)
    ctx = xrt.hw_context(dev, xrt.elf("x.elf"))
    ka, kb = xrt.ext.kernel(ctx, "main:a"), xrt.ext.kernel(ctx, "main:b")
    bo = xrt.ext.bo(dev, 1024)
    to = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
    with agent.step("prefill", tokens=8, ctx=8):
        rl = xrt.runlist(ctx)
        for k in (ka, kb):
            r = xrt.run(k)
            r.set_arg(0, bo)
            rl.add(r)
        rl.execute()
        rl.wait()
        with agent.kernel("argmax", "sampling"):  # a host op after the read side: ends the invocation
            time.sleep(0.001)
        bo.sync(to)
        with agent.kernel("cpu_prep", "other"):  # host work between an invocation's writes and its run
            pass
        r = xrt.run(ka)
        r.set_arg(0, bo)
        r.start()
        with agent.kernel("overlap", "other"):  # host work while the run is in flight
            time.sleep(0.002)
        r.wait2()
        with agent.kernel("ffn_bracket", "matmul"):  # a bracket around XRT calls is not a kernel itself
            r2 = xrt.run(kb)
            r2.start()
            r2.wait()
        with agent.kernel("logits", "other"):
            pass
        bo.sync(to)  # buffer traffic never followed by a run
    b, names = drain(agent)
    rs = [r for r in rows(b, names) if r[1] >= 0]
    got = [r[0] for r in rs]
    assert got[:3] == ["xrt:a+b/bo_write", "xrt:a+b/npu_run", "xrt:a+b/bo_read"]
    assert "argmax" in got and "cpu_prep" in got and "overlap" in got
    assert got[-3:] == ["xrt:bo_only/bo_write", "xrt:bo_only/npu_run", "xrt:bo_only/bo_read"]
    assert "ffn_bracket" not in got and "xrt:b/npu_run" in got
    first = {}
    for r in rs:
        first.setdefault(r[0], r)
    w_a, prep, run_a = first["xrt:a/bo_write"], first["cpu_prep"], first["xrt:a/npu_run"]
    # the write side spans the host op between the sync and the run, but does not count it
    assert w_a[5] == 1024 and w_a[3] <= prep[3] and w_a[4] <= run_a[3] - w_a[3] - prep[4] + 1
    span_a = first["xrt:a/bo_read"][3] - run_a[3]
    assert run_a[4] <= span_a - first["overlap"][4] + 1  # the host op's time is not counted again in the run
    step = b.steps[0]
    in_step = int(b.kernels["dur_ns"][b.kernels["step"] >= 0].sum())
    assert step["phase"] == PREFILL and in_step <= step["dur_ns"]


def test_layer_brackets_label_what_is_inside(xrt: Any, agent: Agent) -> None:
    dev = xrt.device(0)
    k = xrt.ext.kernel(xrt.hw_context(dev, xrt.elf("l.elf")), "main:blk")
    bo = xrt.ext.bo(dev, 64)
    with agent.step("decode", tokens=1, ctx=3):
        for i in range(3):
            with agent.layer(i):
                r = xrt.run(k)
                r.set_arg(0, bo)
                r.start()
                r.wait2()
                with agent.kernel("attn_cpu", "attention"):
                    pass
        with agent.layer(3):  # nothing inside: timed as a whole, as before
            pass
    b, names = drain(agent)
    rs = [r for r in rows(b, names) if r[1] >= 0]
    assert {(r[0], r[2]) for r in rs if r[0] in ("xrt:blk/npu_run", "attn_cpu")} == \
        {(n, i) for n in ("xrt:blk/npu_run", "attn_cpu") for i in range(3)}
    assert [r[2] for r in rs if r[0] == "decoder_layer"] == [3]
    assert agent.source.extra["npu"]["layers"] == "marked"


def test_steps_and_layers_inferred_without_marks(xrt: Any, agent: Agent) -> None:
    """Preloads, a prefill (3 kernels x 4 layers + head), then decode steps (2 kernels x 4 layers + head):
    set-up outside steps, one prefill, every decode step, 4 layers each."""
    dev = xrt.device(0)
    ctx = xrt.hw_context(dev, xrt.elf("m.elf"))
    ks = {n: xrt.ext.kernel(ctx, "main:" + n) for n in ("qkv", "attn", "ffn", "rgr", "ogf", "head")}
    bo = xrt.ext.bo(dev, 256)
    to = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
    frm = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE

    def call(n: str) -> None:
        np.frombuffer(bo.map(), np.uint8)[:8] = 1
        bo.sync(to)
        r = xrt.run(ks[n])
        r.set_arg(0, bo)
        r.start()
        r.wait2()
        bo.sync(frm)

    for _ in range(4):  # weight preloads
        call("rgr")
        call("ogf")
    for _ in range(4):
        call("qkv")
        call("attn")
        call("ffn")
    call("head")
    for _ in range(5):
        with agent.kernel("embed", "embedding"):
            pass
        for _ in range(4):
            call("rgr")
            with agent.kernel("attn_cpu", "attention"):
                pass
            call("ogf")
        call("head")
    b, names = drain(agent)
    steps = b.steps
    assert list(steps["phase"]) == [PREFILL] + [DECODE] * 5
    assert all(s["kernel_ns"] <= s["dur_ns"] for s in steps)
    rs = rows(b, names)
    setup = [r for r in rs if r[1] == -1]
    assert {r[0] for r in setup} >= {"xrt-setup:rgr/npu_run", "xrt-setup:ogf/npu_run"}
    assert sum(r[0] == "xrt-setup:rgr/npu_run" for r in setup) == 4
    dec = [r for r in rs if r[1] == int(steps["step"][-1])]
    assert sorted({r[2] for r in dec if r[0] in ("xrt:rgr/npu_run", "attn_cpu")}) == [0, 1, 2, 3]
    assert {r[2] for r in dec if r[0] in ("embed", "xrt:head/npu_run")} == {NO_LAYER}
    assert sum(r[0] == "xrt:head/npu_run" for r in rs if r[1] >= 0) == 6
    # decode steps are contiguous: each starts where the previous one ended
    ends = steps["start_ns"] + steps["dur_ns"]
    assert all(steps["start_ns"][i + 1] == ends[i] for i in range(1, 5))
    x = agent.source.extra["npu"]
    assert (x["steps"], x["layers"]) == ("inferred", "inferred") and agent.source.n_layers == 4
    assert all(parse_xrt_name(n) is not None for n in names if n.startswith("xrt"))
