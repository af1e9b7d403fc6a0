"""llmtop's own Prometheus metrics (llmtop/export/): the collector over real snapshots, its bounded and
monotonic kernel series, and `--metrics-port` on the agent (in process, `python -m llmtop.agent.run`,
$LLMTOP_METRICS_PORT), the live TUI, `--once` and `llmtop run`, each scraped over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixture_paths import FIXTURES
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import llmtop.agent as agent_mod
from llmtop.cli import PARSERS, main
from llmtop.collectors.replay import load_into
from llmtop.events import CounterSample
from llmtop.export.http import MetricsServer
from llmtop.export.metrics import METRICS, STEP_BUCKETS_S, LlmtopCollector, _TopKernels, exposition
from llmtop.export.options import MetricsOptions, options_from_env
from llmtop.stats import Aggregator

ROOT = Path(__file__).resolve().parents[1]
RECORDING = FIXTURES / "llmtop" / "reference_v2.llmtop"
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond: Any, timeout: float = 30.0, poll: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return False


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a text exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(url: str, accept: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(url, headers={"Accept": accept} if accept else {}, timeout=10)
    assert r.status_code == 200
    return samples(r.text)


def total(s: dict, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in s.items()
               if n == name and all(dict(labels).get(k) == val for k, val in match.items()))


def _registry(col: LlmtopCollector) -> CollectorRegistry:
    r = CollectorRegistry(auto_describe=False)
    r.register(col)
    return r


# -- the collector over a real recording --------------------------------------------------------------
def test_collector_matches_the_report_of_a_recording() -> None:
    agg = Aggregator(10.0)
    load_into(RECORDING, agg)
    rep = agg.snapshot(mode="cumulative").report
    proc = CounterSample("process", 1, {"cpu_pct": 50.0, "rss_bytes": 1e9, "threads": 7.0,
                                        "sys_cpu_pct": 12.0})
    col = LlmtopCollector(agg, lambda: {"process": proc}, top_n=2)
    body, ctype = exposition(_registry(col), None)
    s = samples(body.decode())
    assert ctype.startswith("text/plain")
    # two kernels by name, the rest under "other"; together exactly the report's totals
    named = {dict(lab)["kernel"] for n, lab in s if n == "llmtop_kernel_seconds_total"}
    top2 = {r["name"] for r in sorted(rep["kernels"], key=lambda r: -r["total_ms"])[:2]}
    assert named == top2 | {"other"}
    assert total(s, "llmtop_kernel_seconds_total") == pytest.approx(rep["kernels_total_ms"] / 1e3)
    assert total(s, "llmtop_kernel_calls_total") == sum(r["count"] for r in rep["kernels"])
    t = rep["tokens"]
    assert total(s, "llmtop_tokens_total", phase="prefill") == t["prompt_tokens"]
    assert total(s, "llmtop_generated_tokens_total") == t["generated"]
    assert total(s, "llmtop_step_seconds_count", phase="prefill") == t["prefills"]
    assert total(s, "llmtop_step_seconds_count", phase="decode") == t["decode_steps"]
    assert total(s, "llmtop_step_seconds_sum", phase="decode") == pytest.approx(
        rep["attribution"]["decode"]["wall_ms"] / 1e3)
    assert total(s, "llmtop_kernel_events_total") == rep["events"]
    assert total(s, "llmtop_events_dropped_total") == rep["dropped"]["total"]
    assert total(s, "llmtop_process_cpu_percent") == 50.0
    assert total(s, "llmtop_process_resident_memory_bytes") == 1e9
    # the layer counters add up to the kernel time inside layers
    in_layers = sum(r["total_ms"] for r in agg.snapshot(mode="cumulative", group="layer").report["kernels"]
                    if r.get("layer") is not None)
    assert total(s, "llmtop_layer_seconds_total") == pytest.approx(in_layers / 1e3)
    # buckets are cumulative and end at the step count
    les = [total(s, "llmtop_step_seconds_bucket", phase="decode", le=b)
           for b in [*(repr(float(x)) for x in STEP_BUCKETS_S), "+Inf"]]
    assert les == sorted(les) and les[-1] == t["decode_steps"]


def test_every_documented_metric_is_in_docs() -> None:
    doc = (ROOT / "docs" / "METRICS.md").read_text()
    for m in METRICS:
        shown = m.name + ("_total" if m.kind == "counter" else "")
        assert f"`{shown}" in doc, f"{shown} is not documented in docs/METRICS.md"


def test_step_buckets_against_exact_walls() -> None:
    """The step histogram's cumulative counts from the log buckets against the exact walls: equal except
    for walls within the 2 % bucket just below a bound."""
    import numpy as np

    from llmtop.events import KERNEL_DTYPE, STEP_DTYPE, EventBatch

    rng = np.random.default_rng(1)
    walls = rng.lognormal(np.log(0.03), 1.0, 500)  # seconds
    st = np.zeros(len(walls), STEP_DTYPE)
    st["phase"] = 1
    st["tokens"] = 1
    st["batch"] = 1
    st["start_ns"] = np.arange(len(walls)) * 10**9
    st["dur_ns"] = (walls * 1e9).astype(np.int64)
    st["kernel_ns"] = -1
    agg = Aggregator(10.0)
    agg.ingest(EventBatch(np.zeros(0, KERNEL_DTYPE), st))
    ps = agg.snapshot(mode="cumulative").phase_steps(STEP_BUCKETS_S)["decode"]
    exact = [int((st["dur_ns"] <= b * 1e9).sum()) for b in STEP_BUCKETS_S]
    near = [int(((st["dur_ns"] <= b * 1e9) & (st["dur_ns"] > b * 1e9 / 1.021)).sum()) for b in STEP_BUCKETS_S]
    for got, want, slack in zip(ps.le, exact, near, strict=True):
        assert want - slack <= got <= want
    assert ps.steps == len(walls) and ps.le[-1] == len(walls)  # 60 s is past the slowest
    assert ps.wall_s == pytest.approx(st["dur_ns"].sum() / 1e9)


def test_top_kernels_stay_bounded_and_monotonic() -> None:
    """Kernels entering and leaving the named set: every exported series only grows, and the series sum
    to the exact totals at every build."""
    top = _TopKernels(2)
    seq = [
        {("a", "matmul"): (1.0, 10), ("b", "norm"): (0.5, 10)},
        {("a", "matmul"): (1.5, 20), ("b", "norm"): (0.6, 20), ("c", "rope"): (0.55, 5)},  # c: not 10 % more
        {("a", "matmul"): (2.0, 30), ("b", "norm"): (0.7, 30), ("c", "rope"): (3.0, 15)},  # c takes b's place
        {("a", "matmul"): (2.5, 40), ("b", "norm"): (5.0, 40), ("c", "rope"): (3.1, 16)},  # b back, a out
    ]
    prev: dict[tuple[str, str], tuple[float, float]] = {}
    for totals in seq:
        rows = top.update(totals)
        assert len(rows) <= 3  # top_n + other
        assert sum(r[2] for r in rows) == pytest.approx(sum(v[0] for v in totals.values()))
        assert sum(r[3] for r in rows) == sum(v[1] for v in totals.values())
        for name, opc, s, c in rows:
            if (name, opc) in prev:
                assert s >= prev[(name, opc)][0] - 1e-12 and c >= prev[(name, opc)][1]
        prev = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    assert {r[0] for r in rows} == {"b", "c", "other"}
    # a reset (totals went down) starts everything again from the new totals
    rows = top.update({("a", "matmul"): (0.1, 1)})
    assert rows[0][:3] == ("a", "matmul", 0.1) and rows[-1][2] == 0.0


def test_builds_are_cached_for_a_second() -> None:
    now = [0.0]
    agg = Aggregator(10.0)
    load_into(RECORDING, agg)
    col = LlmtopCollector(agg, min_interval_s=1.0, clock=lambda: now[0])
    reg = _registry(col)
    for _ in range(5):
        exposition(reg, None)
    assert col.builds == 1
    now[0] = 1.5
    exposition(reg, OPENMETRICS)
    assert col.builds == 2


def test_openmetrics_keeps_colons_and_ends_with_eof() -> None:
    from llmtop.serve.metrics import ServeMetrics

    m = ServeMetrics("m")
    m.first_token(0.05)
    body, ctype = m.exposition(OPENMETRICS)
    text = body.decode()
    assert ctype.startswith("application/openmetrics-text") and text.endswith("# EOF\n")
    assert 'vllm:generation_tokens_total{model_name="m"} 1.0' in text  # not vllm_generation_tokens_total


def test_options_from_env_and_bad_values() -> None:
    from llmtop.errors import UsageError

    assert options_from_env({}) is None
    assert options_from_env({"LLMTOP_METRICS_PORT": "9100", "LLMTOP_METRICS_TOP": "5"}) == MetricsOptions(
        9100, "127.0.0.1", 5)
    for env in ({"LLMTOP_METRICS_PORT": "x"}, {"LLMTOP_METRICS_PORT": "70000"},
                {"LLMTOP_METRICS_PORT": "1", "LLMTOP_METRICS_TOP": "0"}):
        with pytest.raises(UsageError):
            options_from_env(env)


def test_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for argv in (["--once", "--metrics-port", str(port)],
                     ["run", "--once", "--metrics-port", str(port), "--", sys.executable, "-c", "pass"]):
            assert main(argv) == 1
            err = capsys.readouterr().err
            assert err == f"llmtop: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use\n"
        r = subprocess.run([sys.executable, "-m", "llmtop.agent.run", "--addr", "127.0.0.1:0",
                            "--metrics-port", str(port), os.devnull], capture_output=True, text=True,
                           timeout=60, cwd=ROOT)
        assert r.returncode == 1 and r.stderr.startswith("llmtop: error: cannot serve metrics on")
        assert "Traceback" not in r.stderr
    assert main(["--once", "--metrics-port", "nope"]) == 2
    assert capsys.readouterr().err == "llmtop: error: --metrics-port must be a port number, got 'nope'\n"


# -- the agent ---------------------------------------------------------------------------------------
def _manual_steps(agent: Any, n_decode: int) -> float:
    """A prefill of 6 tokens and n_decode decode steps with timed kernels; returns the wall they took (s)."""
    t0 = time.perf_counter()
    with agent.step("prefill", tokens=6, batch=1, ctx=6):
        for layer in range(2):
            with agent.kernel("matmul:q_proj", "matmul", layer):
                time.sleep(0.002)
            with agent.kernel("attention:prefill", "attention", layer):
                time.sleep(0.001)
    for i in range(n_decode):
        with agent.step("decode", tokens=1, batch=1, ctx=7 + 40 * i):
            for layer in range(2):
                with agent.kernel("matmul:q_proj", "matmul", layer):
                    time.sleep(0.001)
                with agent.kernel("attention:decode", "attention", layer):
                    time.sleep(0.0005 * (1 + i))
    return time.perf_counter() - t0


def test_agent_serves_metrics_in_process() -> None:
    agent = agent_mod.start("127.0.0.1:0", metrics_port=0)
    try:
        assert agent.metrics_url and agent.metrics_url.startswith("http://127.0.0.1:")
        wall = _manual_steps(agent, 5)
        agent.flush()
        time.sleep(1.1)  # past the collector's one-second cache
        s = scrape(agent.metrics_url, OPENMETRICS)
        assert total(s, "llmtop_generated_tokens_total") == 6  # one from the prefill, one per decode step
        assert total(s, "llmtop_tokens_total", phase="prefill") == 6
        assert total(s, "llmtop_step_seconds_count", phase="decode") == 5
        assert total(s, "llmtop_kernel_calls_total") == 24
        assert total(s, "llmtop_kernel_calls_total", kernel="matmul:q_proj", op_class="matmul") == 12
        k = total(s, "llmtop_kernel_seconds_total")
        assert 0.02 < k <= wall
        assert set(dict(lab)["layer"] for n, lab in s if n == "llmtop_layer_seconds_total") == {"0", "1"}
        assert total(s, "llmtop_attention_ms_per_1k_ctx") > 0  # attention grew with context
        assert total(s, "llmtop_process_threads") >= 1
    finally:
        agent.close()
    with pytest.raises(httpx.HTTPError):
        httpx.get(agent.metrics_url, timeout=2)  # closed with the agent


def test_agent_autostart_reads_the_metrics_env(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    monkeypatch.setenv("LLMTOP_AGENT", "127.0.0.1:0")
    monkeypatch.setenv("LLMTOP_METRICS_PORT", str(port))
    monkeypatch.setattr(agent_mod, "_global", None)
    agent = agent_mod.autostart()
    assert agent is not None
    try:
        assert agent.metrics_url == f"http://127.0.0.1:{port}/metrics"
        _manual_steps(agent, 2)
        agent.flush()
        assert _wait(lambda: total(scrape(agent.metrics_url), "llmtop_generated_tokens_total") == 3, 10)
    finally:
        agent.close()


AGENT_SCRIPT = textwrap.dedent('''
    import pathlib, sys, time
    import llmtop.agent
    agent = llmtop.agent.current()
    for i in range(4):
        with agent.step("decode" if i else "prefill", tokens=1 if i else 9, batch=1, ctx=9 + i):
            with agent.kernel("matmul:lm_head", "matmul"):
                time.sleep(0.003)
    agent.flush()
    pathlib.Path(sys.argv[1]).write_text("ran")
    end = time.monotonic() + 60
    while not pathlib.Path(sys.argv[2]).exists() and time.monotonic() < end:
        time.sleep(0.05)
''')


def test_agent_run_metrics_port(tmp_path: Path) -> None:
    """`python -m llmtop.agent.run --metrics-port P script.py`: the numbers of the script's own steps."""
    script = tmp_path / "loop.py"
    script.write_text(AGENT_SCRIPT)
    ran, done = tmp_path / "ran", tmp_path / "done"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LLMTOP_METRICS_PORT", None)
    p = subprocess.Popen([sys.executable, "-m", "llmtop.agent.run", "--addr", "127.0.0.1:0", "--metrics-port",
                          str(port), str(script), str(ran), str(done)], env=env, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert _wait(lambda: ran.exists() or p.poll() is not None, 60), "the script did not run"
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
        url = f"http://127.0.0.1:{port}/metrics"
        assert _wait(lambda: total(scrape(url), "llmtop_generated_tokens_total") == 4, 10)
        s = scrape(url)
        assert total(s, "llmtop_tokens_total", phase="prefill") == 9
        assert total(s, "llmtop_kernel_calls_total", kernel="matmul:lm_head", op_class="matmul") == 4
        assert 0.012 <= total(s, "llmtop_kernel_seconds_total") < 5
        done.write_text("")
        assert p.wait(30) == 0
        assert f"llmtop metrics on http://127.0.0.1:{port}/metrics" in (p.stderr.read() if p.stderr else "")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


# -- the live TUI and --once ---------------------------------------------------------------------------
async def test_live_tui_metrics_port() -> None:
    """`llmtop --metrics-port P`: the TUI's own aggregator and gauges, scraped while the app runs."""
    from llmtop.cli import build_live_session

    port = _free_port()
    # --in-process: the process gauges follow this process, which outlives the one --no-loop round
    args = PARSERS["llmtop"]().parse_args(["--backend", "cpu", "--prompt", "Hi", "--max-new-tokens", "4",
                                           "--no-loop", "--threads", "1", "--in-process",
                                           "--metrics-port", str(port)])
    session = build_live_session(args)
    url = f"http://127.0.0.1:{port}/metrics"
    with session:
        engine = next(c for c in session.pipeline.collectors if c.name == "engine")
        engine.join(120)
        assert not engine.alive and engine.error is None
        want = len(engine.last_outputs[0].token_ids)

        def generated() -> float:
            return total(scrape(url, OPENMETRICS), "llmtop_generated_tokens_total")

        async with session.app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            assert await _async_wait(lambda: generated() == want, 15)
            assert await _async_wait(lambda: "llmtop_process_cpu_percent" in {n for n, _ in scrape(url)}, 10)
            s = scrape(url)
            rep = session.pipeline.snapshot(mode="cumulative").report
            assert total(s, "llmtop_kernel_seconds_total") == pytest.approx(rep["kernels_total_ms"] / 1e3)
            assert total(s, "llmtop_step_seconds_count", phase="prefill") == 1
            info = [dict(lab) for n, lab in s if n == "llmtop_source_info"]
            assert info and info[0]["backend"] == "cpu"
    with pytest.raises(httpx.HTTPError):  # the session's cleanup stopped the server
        httpx.get(url, timeout=2)


async def _async_wait(cond: Any, timeout: float) -> bool:
    import asyncio

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await asyncio.to_thread(cond):
            return True
        await asyncio.sleep(0.2)
    return False


def test_once_feeds_the_metrics_while_it_runs() -> None:
    """once.run_once with a bound server: after the run the server holds the run's totals (the CLI closes
    it once the report is printed)."""
    from llmtop.collectors.engine_worker import build_engine
    from llmtop.kernels.base import SamplingParams
    from llmtop.once import run_once

    server = MetricsServer(MetricsOptions(0))
    try:
        engine = build_engine(_spec(["--backend", "cpu", "--threads", "1"]), note=lambda _t: None)
        res = run_once(engine, ["Say one word."], batch=1, max_new_tokens=4, sampling=SamplingParams(),
                       chat=True, record=None, window_s=10.0, metrics=server)
        time.sleep(1.1)
        s = scrape(server.url)
        assert total(s, "llmtop_generated_tokens_total") == res.report["tokens"]["generated"] > 0
        assert total(s, "llmtop_kernel_events_total") == res.report["events"]
    finally:
        server.close()


def _spec(argv: list[str]) -> Any:
    from llmtop.cli import engine_spec

    return engine_spec(PARSERS["llmtop"]().parse_args(argv))


# -- llmtop run --------------------------------------------------------------------------------------
RUN_SCRIPT = textwrap.dedent('''
    import json, pathlib, sys, time
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(5, 100, (1, 12))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                         min_new_tokens=6, do_sample=False, pad_token_id=0)
    pathlib.Path(sys.argv[1]).write_text(json.dumps({"generated": int(out.shape[1] - 12)}))
    end = time.monotonic() + 90
    while not pathlib.Path(sys.argv[2]).exists() and time.monotonic() < end:
        time.sleep(0.05)
''')


@pytest.mark.slow
def test_run_once_metrics_port(tmp_path: Path) -> None:
    """`llmtop run --once --metrics-port P -- python script.py`: scraped while COMMAND runs, the metrics
    hold the tokens the script generated; the printed report still comes at the end."""
    script = tmp_path / "gen.py"
    script.write_text(RUN_SCRIPT)
    counts, done = tmp_path / "counts.json", tmp_path / "done"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    result: dict[str, Any] = {}

    def run() -> None:
        result["p"] = subprocess.run(
            [sys.executable, "-m", "llmtop", "run", "--once", "--format", "json", "--metrics-port", str(port),
             "--", sys.executable, str(script), str(counts), str(done)],
            capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})

    t = threading.Thread(target=run)
    t.start()
    try:
        assert _wait(lambda: counts.exists() or not t.is_alive(), 200), "the script did not finish generating"
        assert t.is_alive(), result["p"].stderr[-2000:]
        want = json.loads(counts.read_text())["generated"]

        def gen() -> float:
            try:
                return total(scrape(url), "llmtop_generated_tokens_total")
            except httpx.HTTPError:
                return -1

        # a torch model's step ends when the next forward starts (or the process exits): the last decode
        # step is still open while the script waits, so it shows up in the final report only
        assert _wait(lambda: want - 1 <= gen() <= want, 20), gen()
        s = scrape(url)
        assert total(s, "llmtop_kernel_calls_total", kernel="matmul:q_proj", op_class="matmul") > 0
        assert {dict(lab)["layer"] for n, lab in s if n == "llmtop_layer_seconds_total"} == {"0", "1"}
        assert total(s, "llmtop_process_count") >= 1
    finally:
        done.write_text("")
        t.join(120)
    p = result["p"]
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads(p.stdout)
    assert rep["tokens"]["generated"] == want
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, timeout=2)


@pytest.mark.slow
def test_run_tui_session_metrics_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`llmtop run --metrics-port P -- COMMAND` (the TUI): the session's aggregator over COMMAND's agent."""
    from llmtop.run_command import build_run_session

    monkeypatch.chdir(tmp_path)  # the command's log file is written to the working directory
    script = tmp_path / "gen.py"
    script.write_text(RUN_SCRIPT)
    counts, done = tmp_path / "counts.json", tmp_path / "done"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    session = build_run_session([sys.executable, str(script), str(counts), str(done)], ops="all", agent=None,
                                record=None, window_s=3600, refresh=4, metrics=MetricsOptions(port))
    try:
        with session:
            assert _wait(counts.exists, 200), "the script did not finish generating"
            want = json.loads(counts.read_text())["generated"]
            assert _wait(lambda: want - 1 <= total(scrape(url), "llmtop_generated_tokens_total") <= want, 20)
            s = scrape(url)
            info = [dict(lab) for n, lab in s if n == "llmtop_source_info"]
            assert info and info[0]["kind"] == "run"
            assert total(s, "llmtop_kernel_calls_total", kernel="attention:decode", op_class="attention") > 0
            done.write_text("")
    finally:
        done.write_text("")
    assert session.exit_code() in (0, 130)  # leaving the session stops COMMAND (SIGINT) if it is still up
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, timeout=2)
