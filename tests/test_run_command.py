"""`llmtop run -- COMMAND`: a real child process, the agent armed through sitecustomize, no code change.

Each test writes a user script (and where needed a tiny random checkpoint with `save_pretrained`) and
runs the real `llmtop` CLI in a subprocess, as a user would. The script writes its own counts (prompt
tokens, generated tokens, context) to a JSON file; llmtop's report must equal them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    prompts = torch.randint(5, 200, (2, 40))
    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=8,
                         min_new_tokens=8, do_sample=False, pad_token_id=0)
    counts = {"prompt": int(prompts.numel()), "generated": int(out[:, 40:].numel()),
              "context": int(out.shape[1]), "layers": model.config.num_hidden_layers}
    json.dump(counts, open(sys.argv[2], "w"))
    print("script done")
    sys.exit(int(sys.argv[3]))
''')


def llmtop(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmtop", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def tiny_checkpoint(tmp_path: Path, kind: str) -> Path:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if kind == "llama":
        cfg = tf.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = tf.Qwen2ForCausalLM(cfg)
    else:
        cfg = tf.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=256)
        model = tf.GPT2LMHeadModel(cfg)
    d = tmp_path / kind
    model.save_pretrained(d)
    return d


def run_script(tmp_path: Path, ckpt: Path, *, exit_code: int = 0, extra: tuple[str, ...] = (),
               wrap: list[str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict, dict]:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    counts = tmp_path / "counts.json"
    cmd = [sys.executable, str(script), str(ckpt), str(counts), str(exit_code)]
    if wrap is not None:
        cmd = [*wrap, " ".join(cmd)]
    r = llmtop("run", "--once", "--format", "json", *extra, "--", *cmd)
    report = json.loads(r.stdout[r.stdout.index("{"):]) if "{" in r.stdout else {}
    return r, report, json.loads(counts.read_text()) if counts.exists() else {}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_tokens_equal_the_scripts_own_counts(tmp_path: Path, kind: str) -> None:
    r, rep, truth = run_script(tmp_path, tiny_checkpoint(tmp_path, kind), exit_code=3)
    assert r.returncode == 3, r.stderr[-2000:]  # COMMAND's exit code becomes llmtop's
    assert "script done" in r.stdout  # COMMAND's output passes through
    t = rep["tokens"]
    assert t["prompt_tokens"] == truth["prompt"] == 80
    assert t["generated"] == truth["generated"] == 16
    assert t["context_max"] == truth["context"] - 1  # the last forward sees the context before its token
    assert rep["source"]["n_layers"] == truth["layers"]
    names = {k["name"] for k in rep["kernels"]}
    classes = {k["op_class"] for k in rep["kernels"]}
    assert {"matmul", "attention", "norm"} <= classes
    assert "matmul:lm_head" in names
    assert ({"matmul:q_proj", "matmul:down_proj", "rmsnorm:attn_norm"} <= names if kind != "gpt2"
            else {"matmul:c_attn", "layernorm:attn_norm"} <= names)
    for phase in ("prefill", "decode"):  # Σ op time ≤ step wall in every step: nothing was clamped
        a = rep["attribution"][phase]
        assert a["steps"] > 0 and not a["clamped"] and a["kernel_ms"] <= a["wall_ms"]


def test_followed_through_a_shell_and_recorded(tmp_path: Path) -> None:
    """The agent arms in a grandchild too (a shell runs python), and --record keeps its recording."""
    rec = tmp_path / "run.llmtop"
    r, rep, truth = run_script(tmp_path, tiny_checkpoint(tmp_path, "llama"), extra=("--record", str(rec)),
                               wrap=["sh", "-c"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert rep["tokens"]["generated"] == truth["generated"]
    again = llmtop("report", str(rec), "--format", "json")
    assert again.returncode == 0 and json.loads(again.stdout)["tokens"]["generated"] == truth["generated"]


def test_two_processes_are_merged_into_one_report(tmp_path: Path) -> None:
    """A script that runs its model in two spawned processes: both are instrumented (the agent follows
    into spawned children), and --once reports both, a track per process, tokens summed."""
    ckpt = tiny_checkpoint(tmp_path, "llama")
    script = tmp_path / "two.py"
    script.write_text(textwrap.dedent('''
        import json, sys, multiprocessing as mp

        def work(ckpt, out, i):
            import torch
            from transformers import AutoModelForCausalLM
            torch.manual_seed(i)
            model = AutoModelForCausalLM.from_pretrained(ckpt)
            ids = torch.randint(5, 200, (1, 10 + i))
            o = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5 + i,
                               min_new_tokens=5 + i, do_sample=False, pad_token_id=0)
            json.dump({"prompt": ids.numel(), "generated": int(o.shape[1] - ids.shape[1])},
                      open(f"{out}.{i}", "w"))

        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            ps = [ctx.Process(target=work, args=(sys.argv[1], sys.argv[2], i)) for i in range(2)]
            for p in ps:
                p.start()
            for p in ps:
                p.join()
            sys.exit(max(p.exitcode for p in ps))
    '''))
    counts = tmp_path / "c"
    rec = tmp_path / "two.llmtop"
    r = llmtop("run", "--once", "--format", "json", "--record", str(rec), "--", sys.executable, str(script),
               str(ckpt), str(counts))
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout[r.stdout.index("{"):])
    truth = [json.loads(Path(f"{counts}.{i}").read_text()) for i in range(2)]
    assert rep["tokens"]["generated"] == sum(t["generated"] for t in truth) == 11, (r.stderr, rep["tracks"])
    assert rep["tokens"]["prompt_tokens"] == sum(t["prompt"] for t in truth) == 21
    assert len(rep["source"]["extra"]["processes"]) == 2
    assert rep["warnings"] == [] and rep["skipped"] == {}  # the keys scripts read, present when empty
    assert len(rep["tracks"]) == 2
    assert "2 processes were instrumented" in r.stderr
    kept = sorted(tmp_path.glob("two.llmtop.*"))  # one recording per process
    assert len(kept) == 2
    reports = [json.loads(llmtop("report", str(p), "--format", "json").stdout) for p in kept]
    gen = [x["tokens"]["generated"] for x in reports]
    assert sorted(gen) == sorted(t["generated"] for t in truth)


def test_a_command_without_a_model_says_so_and_keeps_its_exit_code(tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text("import sys\nprint('no model here')\nsys.exit(7)\n")
    r = llmtop("run", "--once", "--", sys.executable, str(script))
    assert r.returncode == 7 and "no model here" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmtop: note: nothing was instrumented"), r.stderr


def test_bad_invocations_are_one_line(tmp_path: Path) -> None:
    r = llmtop("run", "--once")
    assert r.returncode == 2 and r.stderr.startswith("llmtop: error: llmtop run needs a command")
    r = llmtop("run", "--once", "--", str(tmp_path / "no-such-program"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot start" in r.stderr
    r = llmtop("run", "--", sys.executable, "-c", "pass")  # the TUI needs a terminal
    assert r.returncode == 1 and "interactive terminal" in r.stderr


def test_shipped_smollm2_gguf_through_transformers(tmp_path: Path) -> None:
    """The issue's reference run: transformers loads the shipped SmolLM2 GGUF (30 layers)."""
    pytest.importorskip("gguf")
    from llmtop.model.loader import default_model_path

    gguf = default_model_path()
    script = tmp_path / "smol.py"
    script.write_text(textwrap.dedent(f'''
        import json, sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        d, f = {str(gguf.parent)!r}, {gguf.name!r}
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f)
        x = tok(["The capital of France is"], return_tensors="pt")
        out = model.generate(**x, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        n = x["input_ids"].shape[1]
        json.dump({{"prompt": int(x["input_ids"].numel()), "generated": int(out.shape[1] - n)}},
                  open(sys.argv[1], "w"))
    '''))
    counts = tmp_path / "c.json"
    r = llmtop("run", "--once", "--format", "json", "--", sys.executable, str(script), str(counts),
               timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep, truth = json.loads(r.stdout[r.stdout.index("{"):]), json.loads(counts.read_text())
    assert rep["source"]["n_layers"] == 30
    assert rep["tokens"]["prompt_tokens"] == truth["prompt"]
    assert rep["tokens"]["generated"] == truth["generated"]
    names = {k["name"] for k in rep["kernels"]}
    assert {"matmul:q_proj", "matmul:down_proj", "matmul:lm_head"} <= names


def test_ctrl_c_stops_both_and_reports_what_ran(tmp_path: Path) -> None:
    """A terminal's ctrl-c reaches llmtop and COMMAND (one process group): COMMAND ends, llmtop reports
    the steps it recorded and exits with COMMAND's status."""
    import signal
    import time

    ckpt = tiny_checkpoint(tmp_path, "llama")
    script = tmp_path / "forever.py"
    script.write_text(textwrap.dedent(f'''
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(ckpt)!r})
        x = torch.randint(5, 200, (1, 16))
        print("started", flush=True)
        while True:
            model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=16,
                           min_new_tokens=16, do_sample=False, pad_token_id=0)
    '''))
    p = subprocess.Popen([sys.executable, "-m", "llmtop", "run", "--once", "--format", "json", "--",
                          sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.stdout is not None
    line = p.stdout.readline()
    assert "started" in line, p.stderr.read() if p.stderr else ""
    time.sleep(3.0)  # a few generations
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode in (1, 130), err[-2000:]  # Python's KeyboardInterrupt exit, or 128 + SIGINT
    rep = json.loads(out[out.index("{"):])
    assert rep["exit_code"] == p.returncode and rep["tokens"]["generated"] >= 16


async def test_tui_session_attaches_to_the_commands_model(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The TUI path in-process: the watcher finds the announced agent, the panes fill with the script's
    ops, and the session ends with COMMAND's exit status once it has stopped."""
    import time

    from llmtop.run_command import build_run_session
    from llmtop.tui.panes import KernelTable

    monkeypatch.chdir(tmp_path)  # the command's log file is written to the working directory
    ckpt = tiny_checkpoint(tmp_path, "llama")
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    rec = tmp_path / "tui.llmtop"
    session = build_run_session([sys.executable, str(script), str(ckpt), str(tmp_path / "c.json"), "5"],
                                ops="all", agent=None, record=str(rec), window_s=3600, refresh=4)
    app = session.app
    with session:
        watcher = next(c for c in session.pipeline.collectors if c.name == "run")
        watcher.join(120)  # ends once COMMAND exited and its agent delivered the last batches
        assert watcher.exit_code == 5 and watcher.agents
        deadline = time.monotonic() + 10
        while session.pipeline.snapshot(mode="cumulative").report["tokens"]["generated"] < 16:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            app.refresh_now()
            await pilot.pause()
            rep = app.snapshot.report
            assert rep["source"]["kind"] == "run" and rep["tokens"]["prompt_tokens"] == 80
            names = {r["name"] for r in rep["kernels"]}
            assert {"matmul:q_proj", "attention:decode"} <= names
            assert app.query_one(KernelTable).row_count == len(rep["kernels"])
    assert session.exit_code() == 5
    log = (tmp_path / f"llmtop-run-{Path(sys.executable).name}.log").read_text()
    assert log.rstrip().endswith("script done")  # COMMAND's output went to the log named in the title
    assert rec.exists() and rec.stat().st_size > 0
