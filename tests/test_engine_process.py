"""The live engine in a worker process: real model, real child processes, real pipes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from llmtop.agent import wire
from llmtop.collectors.base import DONE, ERROR, STOPPED
from llmtop.collectors.engine_process import EngineProcessCollector
from llmtop.collectors.engine_worker import EngineSpec
from llmtop.collectors.pipeline import child_pipeline
from llmtop.errors import LlmtopError
from llmtop.stats.aggregator import Aggregator

REPO = Path(__file__).resolve().parents[1]


def _spec(**kw: object) -> EngineSpec:
    base: dict[str, object] = {"backend": "cpu", "threads": 1, "prompts": ["Name a colour."],
                               "max_new_tokens": 5}
    base.update(kw)
    return EngineSpec(**base)  # type: ignore[arg-type]


def _wait(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_worker_run_reaches_the_aggregator_and_the_recording(tmp_path: Path) -> None:
    from llmtop.events import EventBatch
    from llmtop.traces.recording import RecordingReader

    rec = tmp_path / "child.llmtop"
    agg = Aggregator(window_s=3600)
    stages: list[str] = []
    p = child_pipeline(_spec(ignore_eos=True), agg, record=str(rec), gpu=False, on_stage=stages.append)
    producer = p.collectors[0]
    assert isinstance(producer, EngineProcessCollector) and p.source is not None
    # the loading screen's stages came over the pipe while the worker built, in order, and are not notes
    assert stages == ["starting the cpu backend", "reading the default model and dequantizing its weights",
                      "placing 30 layers on the cpu backend"], stages
    assert not producer.notes
    assert p.source.backend == "cpu" and p.source.n_layers == 30
    # the process gauges follow the worker, where the decode loop's CPU and memory are
    assert p.collectors[1].proc.pid == producer.pid != os.getpid()
    with p:
        producer.join(60)
        assert producer.state == DONE and producer.error is None
        assert producer.rounds_done == 1 and len(producer.last_outputs[0].token_ids) == 5
        assert producer.current_prompt == "Name a colour."
        p.wait_done(10)
    assert producer.proc.returncode == 0
    rep = agg.snapshot(mode="cumulative").report
    assert rep["tokens"]["generated"] == 5 and rep["tokens"]["decode_steps"] == 4
    assert rep["dropped"]["total"] == 0
    # one decode step = embedding + 15 per layer + final norm + lm_head + sampling, all delivered
    n_steps = rep["tokens"]["prefills"] + rep["tokens"]["decode_steps"]
    assert rep["events"] == n_steps * (1 + 15 * 30 + 3)
    assert any("round 0" in m.text for m in p.markers)
    # the recording holds exactly what the aggregator saw
    with RecordingReader(rec) as reader:
        batches = [item for _, item in reader if isinstance(item, EventBatch)]
    steps = np.concatenate([b.steps for b in batches])
    kernels = np.concatenate([b.kernels for b in batches])
    assert len(steps) == n_steps and len(kernels) == rep["events"]
    for s in steps:  # timing truth survives the pipe: kernels inside a step never sum past its wall
        k = kernels[kernels["step"] == s["step"]]
        assert k["dur_ns"].sum() <= s["dur_ns"]


def test_bad_model_is_one_line_and_leaves_no_process(tmp_path: Path) -> None:
    c = EngineProcessCollector(_spec(model=str(tmp_path / "missing.gguf")))
    with pytest.raises(LlmtopError) as e:
        c.launch()
    assert "missing.gguf" in str(e.value) and "\n" not in str(e.value)
    assert c.proc is not None and c.proc.returncode is not None


def test_bad_spec_is_refused_by_the_worker() -> None:
    out = subprocess.run([sys.executable, "-m", "llmtop.collectors.engine_worker"], input=b'{"modle": "x"}\n',
                         capture_output=True, timeout=60, check=False)
    assert out.returncode == 2
    ftype, payload = wire.read_stream_frame(io.BytesIO(out.stdout))  # type: ignore[misc]
    assert ftype == wire.END and "unknown keys: modle" in json.loads(payload)["error"]


def test_stop_ends_a_looping_worker_cleanly() -> None:
    agg = Aggregator(window_s=3600)
    p = child_pipeline(_spec(loop=True, max_new_tokens=64), agg, process=False, gpu=False)
    producer = p.collectors[0]
    p.start()
    _wait(lambda: p.snapshot(mode="cumulative").report["tokens"]["decode_steps"] >= 3)
    t0 = time.monotonic()
    p.stop(timeout=20)
    assert time.monotonic() - t0 < 15
    assert producer.state == STOPPED and producer.error is None
    assert producer.proc.returncode == 0  # it finished its step, drained, wrote END and exited
    assert producer.cpu_s > 0


def test_a_killed_worker_is_an_error_line_and_the_rest_keeps_running() -> None:
    agg = Aggregator(window_s=3600)
    p = child_pipeline(_spec(loop=True, max_new_tokens=64), agg, gpu=False)
    producer, process = p.collectors
    with p:
        _wait(lambda: p.snapshot(mode="cumulative").report["tokens"]["decode_steps"] >= 2)
        os.kill(producer.pid, signal.SIGKILL)
        producer.join(20)
        assert producer.state == ERROR and "killed by SIGKILL" in (producer.error or "")
        assert any(e.startswith("engine: engine process was killed") for e in p.status().errors)
        process.join(5)  # its process is gone: the gauges end without an error
        assert process.error is None
        assert p.snapshot(mode="cumulative").report["tokens"]["decode_steps"] >= 2  # nothing is lost


def test_the_worker_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import time
        from llmtop.collectors.engine_worker import EngineSpec
        from llmtop.collectors.pipeline import child_pipeline
        from llmtop.stats.aggregator import Aggregator
        spec = EngineSpec(backend="cpu", threads=1, loop=True, max_new_tokens=64)
        p = child_pipeline(spec, Aggregator(), gpu=False, process=False)
        p.start()
        print(p.collectors[0].pid, flush=True)
        time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert _alive(pid)
        parent.kill()
        parent.wait(10)
        _wait(lambda: not _alive(pid) or _zombie(pid), timeout=20)
    finally:
        if parent.poll() is None:
            parent.kill()


def _zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stream_frames_end_cleanly_or_loudly() -> None:
    good = wire.json_frame(wire.NOTE, {"text": "hi"})
    f = io.BytesIO(good + good[:3])
    assert wire.read_stream_frame(f) == (wire.NOTE, good[5:])
    with pytest.raises(wire.WireError, match="header"):
        wire.read_stream_frame(f)
    assert wire.read_stream_frame(io.BytesIO(b"")) is None
    with pytest.raises(wire.WireError, match="inside a frame"):
        wire.read_stream_frame(io.BytesIO(good[:-1]))
    with pytest.raises(wire.WireError, match="unknown frame type"):
        wire.read_stream_frame(io.BytesIO(b"\x00\x00\x00\x00\x63"))


def test_spec_round_trips_and_refuses_garbage() -> None:
    s = _spec(loop=True, temperature=0.7, top_k=5, seed=3)
    assert EngineSpec.from_json(s.to_json()) == s
    with pytest.raises(LlmtopError, match="not JSON"):
        EngineSpec.from_json("{")
    with pytest.raises(LlmtopError, match="not a JSON object"):
        EngineSpec.from_json("[1]")


def test_warmup_rounds_are_untimed_and_the_report_says_warm(tmp_path) -> None:
    """--once runs one untimed round first (its events dropped, the name table rewound), so its TTFT is
    warm and says so; --warmup 0 is a cold start; a recording of the warm run reads back whole."""
    import json
    import subprocess
    import sys

    rec = tmp_path / "w.llmtop"
    base = [sys.executable, "-m", "llmtop", "--once", "--max-new-tokens", "6", "--ignore-eos", "--format",
            "json"]
    warm = json.loads(subprocess.run([*base, "--record", str(rec)], capture_output=True, text=True,
                                     timeout=300, check=True).stdout)
    cold = json.loads(subprocess.run([*base, "--warmup", "0"], capture_output=True, text=True, timeout=300,
                                     check=True).stdout)
    assert warm["tokens"]["ttft_warm"] is True and cold["tokens"]["ttft_warm"] is False
    assert warm["source"]["extra"]["warmup_rounds"] == 1
    # the warm-up's prefill and decode steps are not in the report: one prefill, 6 tokens
    assert warm["tokens"]["prefills"] == cold["tokens"]["prefills"] == 1
    assert warm["tokens"]["generated"] == cold["tokens"]["generated"] == 6
    cmd = [sys.executable, "-m", "llmtop", "report", str(rec), "--format", "json"]
    again = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout)
    assert again["tokens"]["generated"] == 6 and again["kernels"] == warm["kernels"]
    bad = subprocess.run([*base, "--warmup", "-1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and bad.stderr.startswith("llmtop: error:")
