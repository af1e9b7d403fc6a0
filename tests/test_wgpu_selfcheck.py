"""The wgpu backend's start-up self-check: it passes on a working adapter, costs little, leaves no events
behind, and refuses an adapter whose kernel computes wrong results with one line (CLI included)."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
from wgpu_adapters import needs_adapter

from llmtop.errors import LlmtopError
from llmtop.kernels.base import KernelRecorder
from llmtop.kernels.selfcheck import TOLERANCE
from llmtop.kernels.wgpu_backend import kv_cache_layout

REFUSAL = re.compile(r"^WebGPU adapter .+ computed wrong results in (\S+) \(max error [^)]+\); "
                     r"install mesa-vulkan-drivers or choose another adapter$")

# One deliberate bug per kernel kind: (shader, text, replacement) -> the kernel the check must name.
FAULTS = {
    "add": ("add", "vec4<f32>(a[i]) + vec4<f32>(b[i])", "vec4<f32>(a[i]) - vec4<f32>(b[i])"),
    "silu_mul": ("silu_mul", "exp(-g)", "exp(g)"),
    "attention:prefill": ("attention", "* p.scale;", "* p.scale * 0.5;"),
}


def test_kv_cache_layout_never_one_layer_nor_a_cube_on_opengl() -> None:
    assert kv_cache_layout(64, 1, 8192, opengl=False) == (32, 2, 2)  # split in two: same memory
    assert kv_cache_layout(1, 1, 8192, opengl=False) == (1, 2, 2)
    assert kv_cache_layout(64, 3, 8192, opengl=False) == (64, 1, 3)
    assert kv_cache_layout(64, 6, 8192, opengl=False) == (64, 1, 6)
    assert kv_cache_layout(64, 6, 8192, opengl=True) == (64, 1, 7)  # 6 layers would read as a cube
    assert kv_cache_layout(20000, 6, 8192, opengl=True) == (8192, 3, 19)
    for ctx in (1, 2, 7, 64, 8192, 9000):
        for batch in range(1, 14):
            seg, nseg, layers = kv_cache_layout(ctx, batch, 8192, opengl=True)
            assert seg * nseg >= ctx and layers >= batch * nseg >= 2 and layers % 6 != 0


@needs_adapter
def test_self_check_passes_and_leaves_no_events() -> None:
    from llmtop.kernels.wgpu_backend import WgpuOps

    rec = KernelRecorder()
    ops = WgpuOps(rec)
    try:
        chk = ops.self_check
        assert chk is not None and ops.recorder is rec
        kinds = {"embedding", "rmsnorm", "linear", "rope", "kv_write", "attention:prefill",
                 "attention:decode", "silu_mul", "add", "sampling"}
        assert set(chk.errors) == kinds and max(chk.errors.values()) <= TOLERANCE["float32"]
        assert 0 < chk.seconds < 30 and ops.adapter_summary()["self_check"]["kernels"] == 10
        from llmtop.tui.view import adapter_line

        summary = ops.adapter_summary()
        assert f"self-check ok {summary['self_check']['seconds']:.2f} s" in adapter_line(summary)
        assert rec.drain() is None and rec.rows == []  # the check's kernels never reach the profile
    finally:
        ops.close()


@needs_adapter
@pytest.mark.parametrize("kernel", sorted(FAULTS))
def test_corrupt_kernel_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, kernel: str) -> None:
    import llmtop.kernels.wgpu.resources as res
    import llmtop.kernels.wgpu_backend as wb

    shader, old, new = FAULTS[kernel]

    def hook(name: str, src: str) -> str:
        if name != shader:
            return src
        assert old in src, f"{shader}.wgsl changed: update the fault for {kernel}"
        return src.replace(old, new)

    monkeypatch.setattr(res, "SHADER_HOOK", hook)
    with pytest.raises(LlmtopError) as e:
        wb.WgpuOps(KernelRecorder())
    m = REFUSAL.match(str(e.value))
    assert m and m.group(1) == kernel, str(e.value)


@needs_adapter
def test_cli_refuses_a_wrong_adapter_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import llmtop.kernels.wgpu.resources as res
    from llmtop.cli import main

    shader, old, new = FAULTS["add"]
    monkeypatch.setattr(res, "SHADER_HOOK",
                        lambda name, src: src.replace(old, new) if name == shader else src)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--once", "--backend", "wgpu", "--max-new-tokens", "2", "--format", "json"])
    lines = err.getvalue().strip().splitlines()
    assert rc != 0 and out.getvalue() == ""
    assert len(lines) == 1 and lines[0].startswith("llmtop: error: ") and REFUSAL.match(lines[0][15:]), lines


def test_adapter_flag_needs_wgpu() -> None:
    from llmtop.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["--once", "--backend", "cpu", "--adapter", "Vulkan"])
    assert rc == 2 and "needs --backend wgpu" in err.getvalue()


@needs_adapter
def test_adapter_flag_names_the_adapters_present() -> None:
    from llmtop.kernels.wgpu_backend import WgpuOps

    with pytest.raises(LlmtopError, match="no WebGPU adapter matches 'no-such-gpu'"):
        WgpuOps(KernelRecorder(), adapter="no-such-gpu")
