"""`llmtop run --once --format json -- python <fake-NPU decode script>`: an XRT/pyxrt decode loop, live.

No NPU is reachable: the script imports the tests' stand-in `pyxrt` (tests/fake_pyxrt/, on PYTHONPATH
only here), which busy-waits with the GIL held like the real binding. The script is mlir-air's llama32_1b
decode shape (tests/npu_stand_in.py) and times the BO write / NPU run / BO read of every call itself, as
mlir-air's Profiler does; llmtop's report must equal its counts and bytes, and its times within what the
Python between the two timers costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from npu_stand_in import DECODE_SCRIPT, FAKE_PYXRT_DIR

N_TOKENS = 6
PARTS = (("write_ns", "bo_write_ms"), ("run_ns", "npu_run_ms"), ("read_ns", "bo_read_ms"))


def run_decode(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], dict]:
    script = tmp_path / "npu_decode.py"
    script.write_text(DECODE_SCRIPT)
    truth = tmp_path / "truth.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(FAKE_PYXRT_DIR),
                                                                   os.environ.get("PYTHONPATH")) if p),
           "FAKE_PYXRT_SCALE": "0.05", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "llmtop", "run", "--once", "--format", "json", "--",
                        sys.executable, str(script), mode, str(truth), str(N_TOKENS)],
                       capture_output=True, text=True, timeout=120, env=env)
    rep = json.loads(r.stdout[r.stdout.index("{"):]) if "{" in r.stdout else {}
    return r, rep, json.loads(truth.read_text()) if truth.exists() else {}


def close(got: float, want_ms: float, calls: int) -> bool:
    """Within what the Python between the script's timer and the wrapped call costs (a few µs per call,
    more on a loaded machine), and 5 %."""
    return abs(got - want_ms) <= 0.05 + 0.04 * calls + 0.05 * want_ms


@pytest.mark.parametrize("mode", ["host", "zero", "steps"])
def test_live_npu_profile_equals_the_scripts_own(tmp_path: Path, mode: str) -> None:
    r, rep, truth = run_decode(tmp_path, mode)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "npu decode done" in r.stdout
    src = rep["source"]
    assert src["backend"] == "npu" and src["n_layers"] == 16
    marked = mode == "steps"
    assert src["extra"]["npu"]["steps"] == ("marked" if marked else "inferred")
    assert src["extra"]["npu"]["layers"] == ("marked" if marked else "inferred")
    npu = rep["npu"]
    assert npu["steps_source"] == src["extra"]["npu"]["steps"]
    rows = {k["name"]: k for k in npu["kernels"]}
    # one row per XRT kernel, its count = the calls the script made inside steps (preloads are set-up)
    assert {n: k["count"] for n, k in rows.items()} == truth["calls"]
    assert {k["name"]: k["count"] for k in npu["setup"]["kernels"]} == truth["setup_calls"]
    assert npu["load"]["calls"] == truth["loads"] == 15
    assert set(npu["load"]["by_call"]) == {"elf", "hw_context", "kernel"}
    for name, k in rows.items():
        n = truth["calls"][name]
        for tkey, key in PARTS:
            assert close(k[key], truth[tkey][name] / 1e6, n), (name, key, k[key], truth[tkey][name] / 1e6)
        assert k["total_ms"] == pytest.approx(k["bo_write_ms"] + k["npu_run_ms"] + k["bo_read_ms"])
        assert k["mb_written"] == pytest.approx(truth["bytes_w"][name] / 2**20, abs=1e-12)
        assert k["mb_read"] == pytest.approx(truth["bytes_r"][name] / 2**20, abs=1e-12)
    tot = npu["totals"]
    assert tot["count"] == sum(truth["calls"].values())
    assert tot["bo_write_pct"] + tot["npu_run_pct"] + tot["bo_read_pct"] == pytest.approx(100.0)
    t = rep["tokens"]
    assert t["prefills"] == 1 and t["decode_steps"] == N_TOKENS
    for phase in ("prefill", "decode"):
        a, g = npu["attribution"][phase], rep["attribution"][phase]
        assert a["steps"] == a["timed_steps"] == (1 if phase == "prefill" else N_TOKENS)
        # XRT and host events are back to back: never more than the step wall, nothing clamped
        assert not a["clamped"] and not g["clamped"] and g["kernel_ms"] <= g["wall_ms"]
        assert a["npu_ms"] + a["host_ms"] <= a["wall_ms"] + 1e-9
        # the remainder (python scheduling) is the step wall minus what was attributed
        assert a["python_ms"] == pytest.approx(a["wall_ms"] - a["npu_ms"] - a["host_ms"], abs=1e-6)
        assert a["npu_pct"] + a["host_pct"] + a["python_pct"] == pytest.approx(100.0)
        if phase == "decode":  # the set-up calls (outside every step) count as prefill-phase kernels there
            assert a["npu_ms"] == pytest.approx(g["by_op_class_ms"]["npu"], abs=1e-6)
    # all 16 layers, by marks or inferred from the repeating rms_gemv_rope -> o_gemv_ffn pattern
    assert [x["layer"] for x in rep["layers"]] == list(range(16))
    assert all(x["by_op_class"].get("npu", 0) > 0 for x in rep["layers"])
    hosts = {h["name"]: h for h in npu["host_ops"]}
    if mode == "zero":
        assert hosts == {} and all(a["host_ms"] == 0 for a in npu["attribution"].values())
        # steps begin at their first XRT call: the unmarked tokenize (a 1 ms sleep) is not in the prefill
        assert truth["prefill_ns"] / 1e6 - 5 <= t["ttft_ms_mean"] <= truth["prefill_ns"] / 1e6
    else:
        assert {n: h["count"] for n, h in hosts.items()} == truth["host"]
        for n, h in hosts.items():
            assert close(h["total_ms"], truth["host_ns"][n] / 1e6, h["count"]), (n, h, truth["host_ns"][n])
        assert hosts["decode_attention_cpu"]["op_class"] == "attention"
        assert {x["layer"] for x in rep["layers"] if "attention" in x["by_op_class"]} == set(range(16))
    if mode != "steps":
        # inferred steps end where the script's tokens end (its lm_head's last read)
        assert rep["trend"]["steps"] == N_TOKENS
        want = sum(truth["token_ns"]) / N_TOKENS / 1e6
        assert t["tpot_ms_mean"] == pytest.approx(want, rel=0.03, abs=0.1)
        assert rep["trend"]["first_ms"] == pytest.approx(truth["token_ns"][0] / 1e6, rel=0.05, abs=0.1)
        assert rep["trend"]["last_ms"] == pytest.approx(truth["token_ns"][-1] / 1e6, rel=0.05, abs=0.1)
        assert "inferred" in " ".join(npu["notes"])
    if mode == "host":  # the prefill starts with its own host ops (tokenize, embed lookup)
        assert t["ttft_ms_mean"] == pytest.approx(truth["prefill_ns"] / 1e6, rel=0.03, abs=0.1)


def test_text_report_shows_the_npu_tables(tmp_path: Path) -> None:
    """The same run as text: the per-kernel split, the attribution and the host ops."""
    script = tmp_path / "npu_decode.py"
    script.write_text(DECODE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(FAKE_PYXRT_DIR), "FAKE_PYXRT_SCALE": "0.02"}
    r = subprocess.run([sys.executable, "-m", "llmtop", "run", "--once", "--", sys.executable, str(script),
                        "host", str(tmp_path / "t.json"), "3"], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for s in ("NPU XRT calls", "BO write (ms)", "rms_gemv_rope", "lm_head_gemv", "NPU wall-time attribution",
              "Python scheduling", "CPU host ops", "decode_attention_cpu", "layers inferred"):
        assert s in out, s


def test_manual_api_under_llmtop_run(tmp_path: Path) -> None:
    """`llmtop.agent.start()` in a script run by `llmtop run` is that process's agent: a loop marked with
    the manual API only (no torch, no XRT) is recorded and reported."""
    script = tmp_path / "manual.py"
    script.write_text(
        "import time\nimport llmtop.agent\n"
        "agent = llmtop.agent.start()\n"
        "for i in range(4):\n"
        "    with agent.step('decode', tokens=1, ctx=10 + i):\n"
        "        for layer in range(2):\n"
        "            with agent.layer(layer), agent.kernel('cpu_gemv', 'matmul'):\n"
        "                time.sleep(0.001)\n")
    r = subprocess.run([sys.executable, "-m", "llmtop", "run", "--once", "--format", "json", "--",
                        sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout[r.stdout.index("{"):])
    assert rep["tokens"]["decode_steps"] == 4 and rep["npu"] is None
    assert [x["layer"] for x in rep["layers"]] == [0, 1]
    assert {k["name"] for k in rep["kernels"]} == {"cpu_gemv"}
