"""The mlir-air `make profile` importer (llmtop/traces/importers/mlir_air.py) on a log written from the seed's
published numbers (tests/fixtures/npu/, tests/npu_stand_in.py): its tables come back as the `npu` section,
TTFT / TPOT, per-layer time and the per-token trend; damaged logs give one line, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from npu_stand_in import mlir_air_log, numbers

from llmtop.cli import main
from llmtop.traces.open import detect_format

N_TOK = 30


def _report(capsys: pytest.CaptureFixture[str], path: Path, fmt: str = "json") -> tuple[int, str, str]:
    rc = main(["report", str(path), "--format", fmt])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture
def log(tmp_path: Path) -> Path:
    p = tmp_path / "profile_20260822.log"
    p.write_text("Compiling prefill kernels...\n" + mlir_air_log())
    return p


def test_seed_profile_comes_back_as_the_npu_tables(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert detect_format(log) == "mlir-air"
    rc, out, err = _report(capsys, log)
    assert rc == 0, err
    rep = json.loads(out)
    num = numbers()
    npu = rep["npu"]
    rows = {k["name"]: k for k in npu["kernels"]}
    want = {k["name"]: (k, 16) for k in num["prefill"]["npu"]}
    want |= {k["name"]: (k, 16 * N_TOK) for k in num["decode"]["npu"] if k.get("per_layer")}
    want["lm_head_gemv"] = (next(k for k in num["decode"]["npu"] if k["name"] == "lm_head_gemv"), N_TOK + 1)
    assert {n: r["count"] for n, r in rows.items()} == {n: c for n, (_, c) in want.items()}
    for name, (k, c) in want.items():
        r = rows[name]
        assert r["bo_write_ms"] == pytest.approx(k["write"] * c)
        assert r["npu_run_ms"] == pytest.approx(k["run"] * c)
        assert r["bo_read_ms"] == pytest.approx(k["read"] * c)
        assert r["mean_ms"] == pytest.approx(k["write"] + k["run"] + k["read"])
        assert r["mb_written"] == pytest.approx(k["mb"] * c, abs=1e-5) and r["mb_read"] == 0
    assert npu["totals"]["npu_run_pct"] > 97  # the seed: NPU Run dominates both phases
    lm = rows["lm_head_gemv"]["mean_ms"]
    # TTFT = tokenize + EOS-pad + embed + 16 x layer wall + final norm + LM head (the seed: ~1.28 s)
    pre = {c["name"]: c["avg"] for c in num["prefill"]["cpu"]}
    ttft = pre["tokenize"] + pre["eos_pad"] + pre["embed_lookup"] + 16 * num["prefill"]["layer_wall"] \
        + pre["final_rms_norm"] + lm
    t = rep["tokens"]
    assert t["ttft_ms_mean"] == pytest.approx(ttft) and t["ttft_ms_mean"] == pytest.approx(1280, rel=0.01)
    assert t["prefills"] == 1 and t["decode_steps"] == N_TOK and t["prompt_tokens"] == num["seq_len"]
    # TPOT: each token's layer-loop wall from the trend line + final norm + LM head (the seed: ~92 ms)
    first, mid, last = num["decode"]["trend"]
    tail = 0.07 + lm
    tr = rep["trend"]
    assert tr["steps"] == N_TOK
    assert (tr["first_ms"], tr["middle_ms"], tr["last_ms"]) == pytest.approx((first + tail, mid + tail,
                                                                              last + tail))
    assert tr["drift_pct"] == pytest.approx((last - first) / (first + tail) * 100)
    assert t["tpot_ms_mean"] == pytest.approx(92.8, abs=0.5)
    # wall-time attribution, the seed's: NPU XRT ~87 % / CPU host ~3 % / python ~10 % of TTFT; decode 92 / 5
    a = npu["attribution"]
    assert a["prefill"]["npu_pct"] == pytest.approx(88, abs=1.5)
    assert a["prefill"]["host_pct"] == pytest.approx(3, abs=0.5)
    assert a["prefill"]["python_pct"] == pytest.approx(9, abs=1.5)
    assert a["decode"]["npu_pct"] == pytest.approx(92.7, abs=1)
    assert a["decode"]["host_ms_per_step"] == pytest.approx(16 * 0.28 + 0.07)
    for ph in ("prefill", "decode"):
        x = a[ph]
        assert x["python_ms"] == pytest.approx(x["wall_ms"] - x["npu_ms"] - x["host_ms"])
    layers = rep["layers"]
    assert [x["layer"] for x in layers] == list(range(16)) and layers[0]["phase"] == "decode"
    assert layers[0]["by_op_class"] == pytest.approx({"npu": 0.86 + 3.67, "attention": 0.28})
    hosts = {h["name"]: (h["op_class"], h["count"]) for h in npu["host_ops"]}
    assert hosts["decode_attention_cpu"] == ("attention", 16 * N_TOK)
    assert hosts["kv_cache_extract"][1] == 16
    assert rep["source"]["backend"] == "mlir-air" and rep["source"]["n_layers"] == 16
    assert npu["steps_source"] == "synthetic" and npu["layers_source"] == "report"
    assert any("averages" in w for w in rep["warnings"]) and "LM head" in " ".join(rep["warnings"])
    assert rep["skipped"] == {}


def test_text_report_prints_the_fine_grained_table(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _report(capsys, log, "text")
    assert rc == 0
    for s in ("NPU XRT calls", "rms_gemv_rope", "flash_attn", "TOTAL", "NPU wall-time attribution",
              "CPU host ops", "decode_attention_cpu"):
        assert s in out, s


def test_one_report_without_headings_or_dataflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the decode PROFILING REPORT cut out of a log: decode by its Per-Layer (xN) rows."""
    text = mlir_air_log()
    p = tmp_path / "decode_only.log"
    p.write_text(text[text.rindex("=" * 60 + "\nPROFILING REPORT"):])
    rc, out, err = _report(capsys, p)
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["tokens"]["prefills"] == 0 and rep["tokens"]["decode_steps"] == N_TOK
    rows = {k["name"]: k["count"] for k in rep["npu"]["kernels"]}
    # without the prefill tables the LM head's extra call stays in decode: 31 calls over 30 steps
    assert rows == {"rms_gemv_rope": 480, "o_gemv_ffn": 480, "lm_head_gemv": 31}
    assert len(rep["layers"]) == 16


@pytest.mark.parametrize("text", [
    "=" * 60 + "\nPROFILING REPORT\n" + "=" * 60 + "\n\n--- Wall-Time Attribution ---\n",
    "PROFILING REPORT\n--- NPU XRT Call Breakdown (avg per invocation) ---\n"
    "  rms_gemv_rope   avg=   0.90ms  min=   0.80ms  max=   1.00ms  (x99999999999)\n",
    "PROFILING REPORT\n--- Per-Layer Execution ---\n" + "".join(
        f"  Layer {i:3d}: avg=   4.95ms  min=   4.90ms  max=   5.00ms  (x999999999)\n" for i in range(40)),
])
def test_damaged_logs_say_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        text: str) -> None:
    p = tmp_path / "bad.log"
    p.write_text(text)
    rc, out, err = _report(capsys, p)
    assert rc != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmtop: error: ") and "Traceback" not in err
    assert "mlir-air" in lines[0]


def test_garbage_rows_are_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows a damaged log mangled are not read as numbers; the rest still imports."""
    text = mlir_air_log().replace("  o_gemv_ffn ", "  o_gemv_ffn avg=??ms ", 1)
    text = text.replace("(x480)", "(x4z0)", 1)
    p = tmp_path / "mangled.log"
    p.write_text(text)
    rc, out, err = _report(capsys, p)
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["npu"]["kernels"] and rep["tokens"]["decode_steps"] == N_TOK
