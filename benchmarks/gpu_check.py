"""The prepared GPU check of `llmtop --backend cuda` (issue 20): one short verdict per item, under 8 minutes
on one GPU. Run it through benchmarks/gpu_check.sh; `--dry-run` runs every item's code path on CPU (tiny
models, no sync-debug mode, no CUPTI, no NVML device) so the script cannot rot: tests/test_cuda_gpu_check.py
runs it in CI.

Items (each prints one line "VERDICT item: detail"; PASS / FAIL / WARN / INFO / SKIP, DRY in --dry-run):
  tests      the CUDA tests (pytest -m cuda) and tests/test_engine.py (--backend auto picks CUDA here)
  syncfree   torch.cuda.set_sync_debug_mode("error") over decode steps (timed and untimed), then a prefill
  cupti      CUDA-event op totals vs CUPTI kernel busy time on a GPU-bound prefill, by dtype (fp32 with
             TF32, bf16, fp16): within 5 %; and the GPU idle share of decode steps (launch-bound or not)
  attribution  the live CUPTI step sampler's busy / idle / host in the report's attribution (decode, bf16)
  overhead   decode tok/s with timing on (CUPTI sampled every 2 s, the default) vs off (bf16)
  agent      the agent on a GPU-bound HF prefill: step wall (max of host and GPU span) vs a synchronized
             measurement, and Σ op time <= wall
  nvml       the GPU gauges on the engine's device (chosen by UUID): fields present, nvmlShutdown
Exit status: 1 when any item FAILs, else 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from llmtop.events import PREFILL  # noqa: E402
from llmtop.kernels.base import KernelRecorder, SamplingParams  # noqa: E402
from llmtop.kernels.cuda_events import CudaEventRecorder  # noqa: E402
from llmtop.kernels.gpu_profile import StepSampler, kineto_intervals, split_step  # noqa: E402
from llmtop.kernels.torch_backend import TorchOps  # noqa: E402
from llmtop.model.config import ModelConfig  # noqa: E402
from llmtop.model.engine import Engine  # noqa: E402
from llmtop.model.loader import LoadedModel, load_model  # noqa: E402
from llmtop.model.presets import random_weights  # noqa: E402

RESULTS: list[tuple[str, str, str]] = []


class ItemTimeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise ItemTimeout


def verdict(item: str, v: str, detail: str) -> None:
    RESULTS.append((item, v, detail))
    print(f"{v:5s} {item}: {detail}", flush=True)


def run_item(item: str, fn: Callable[[], None], limit_s: int) -> None:
    t0 = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    try:
        fn()
    except ItemTimeout:
        verdict(item, "FAIL", f"timed out after {limit_s} s")
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        verdict(item, "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                f"({Path(tb.filename).name}:{tb.lineno})")
    finally:
        signal.alarm(0)
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
    print(f"      ({item}: {time.monotonic() - t0:.0f} s)", flush=True)


# -- models --------------------------------------------------------------------------------------------------
def tiny_model() -> LoadedModel:
    cfg = ModelConfig(name="tiny", vocab_size=97, hidden_size=64, intermediate_size=96, n_layers=2, n_heads=4,
                      n_kv_heads=2, head_dim=16, max_context=512, rms_eps=1e-5, rope_theta=1e4)
    return LoadedModel(cfg, random_weights(cfg), None, "preset:tiny", True)


def attach_sampler(rec: KernelRecorder, sm: StepSampler | None) -> None:
    """The CUDA recorder calls its sampler around each step; a dry run's CPU recorder gets the same calls
    through wrapped begin_step / end_step (None: unwrap)."""
    if isinstance(rec, CudaEventRecorder):
        rec.sampler = sm
        return
    for name in ("begin_step", "end_step"):
        rec.__dict__.pop(name, None)
    if sm is None:
        return
    begin, end = rec.begin_step, rec.end_step

    def begin_step(*a: object) -> None:
        sm.before_step()
        begin(*a)

    def end_step(*a: object) -> None:
        step, t0 = rec._step_meta[1], rec._step_t0
        end(*a)
        sm.after_step(step, time.perf_counter_ns() - t0)

    rec.begin_step, rec.end_step = begin_step, end_step  # type: ignore[method-assign]


class Check:
    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self._big: LoadedModel | None = None
        self._small: LoadedModel | None = None

    @property
    def tag(self) -> str:
        return "DRY" if self.dry else ""

    def small(self) -> LoadedModel:
        """The shipped SmolLM2-135M (launch-bound decode on a GPU); the tiny model in a dry run."""
        if self._small is None:
            self._small = tiny_model() if self.dry else load_model("default")
        return self._small

    def big(self) -> LoadedModel:
        """llama-3.2-1b with random weights (a GPU-bound prefill); the tiny model in a dry run."""
        if self._big is None:
            self._big = tiny_model() if self.dry else load_model("llama-3.2-1b")
        return self._big

    def ops(self, dtype: str, timed: bool = True, sample_s: float = 0.0) -> TorchOps:
        """sample_s: the live CUPTI step sampler's period (0: off, so the items that run their own
        profiler are not disturbed by it; the `attribution` item runs it as users get it)."""
        return TorchOps(KernelRecorder(enabled=timed), device=self.device, dtype=dtype, gpu_sample_s=sample_s)

    def sync(self) -> None:
        if not self.dry:
            torch.cuda.synchronize()

    # -- items -----------------------------------------------------------------------------------------------
    def tests(self) -> None:
        files = ["tests/test_torch_backend.py", "tests/test_cuda_paths.py", "tests/test_cuda_nvml.py",
                 "tests/test_cuda_gpu_profile.py"]
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        if self.dry:
            r = subprocess.run([*base, "--collect-only", "-m", "cuda", *files], cwd=ROOT, capture_output=True,
                               text=True)
            n = sum(1 for line in r.stdout.splitlines() if "::" in line)
            ok = r.returncode == 0 and n > 0
            verdict("tests", "DRY" if ok else "FAIL", f"{n} CUDA tests collect (not run: no GPU)")
            return
        r1 = subprocess.run([*base, "-m", "cuda", *files], cwd=ROOT, capture_output=True, text=True)
        r2 = subprocess.run([*base, "tests/test_engine.py"], cwd=ROOT, capture_output=True, text=True)
        last = [(r.stdout.strip().splitlines() or ["?"])[-1] for r in (r1, r2)]
        ok = r1.returncode == 0 and r2.returncode == 0
        verdict("tests", "PASS" if ok else "FAIL", f"-m cuda: {last[0]}; test_engine.py: {last[1]}")
        if not ok:
            print((r1.stdout + r2.stdout)[-3000:], flush=True)

    def syncfree(self) -> None:
        prompts = ["Tell me about GPUs.", "Hi", "Write a haiku about the sea.", "What is 2 + 2?"]
        for timed in (True, False):
            ops = self.ops("bfloat16", timed)
            eng = Engine(self.small(), ops, max_batch=4)
            eng.generate(prompts, 4)  # warm-up (and cuBLAS set-up) outside the check

            def on_tokens(step: int, new: list, finished: list) -> None:
                if step == 0 and not self.dry:
                    torch.cuda.set_sync_debug_mode("error")

            try:
                gens = eng.generate(prompts, 32, on_tokens=on_tokens)
                if not self.dry:
                    torch.cuda.set_sync_debug_mode("error")
                eng.generate(["A longer prompt, so that this prefill has its own shapes: " * 4], 1)
            finally:
                if not self.dry:
                    torch.cuda.set_sync_debug_mode("default")
            steps = sum(len(g.token_ids) for g in gens)
            ops.synchronize()
            verdict("syncfree", self.tag or "PASS",
                    f"{'timed' if timed else 'untimed'}: {steps} tokens over decode steps and a prefill "
                    f"{'ran (no sync-debug mode on CPU)' if self.dry else 'under sync-debug error mode'}")
            ops.close()

    def cupti(self) -> None:
        B, T = (2, 64) if self.dry else (4, 512)
        lm = self.big()
        rng = np.random.default_rng(0)
        ids = [rng.integers(10, lm.config.vocab_size - 1, T).tolist() for _ in range(B)]
        act = torch.profiler.ProfilerActivity
        activities = [act.CPU if self.dry else act.CUDA]
        for dtype in ("float32", "bfloat16", "float16"):
            ops = self.ops(dtype)
            eng = Engine(lm, ops, max_batch=B)
            eng.generate(ids, 1, chat=False)  # warm-up + a first prefill outside the measurement
            self.sync()
            ops.recorder.drain()
            with torch.profiler.profile(activities=activities) as prof:
                eng.generate(ids, 1, chat=False)  # one prefill step
                self.sync()
            b = ops.recorder.drain()
            st = b.steps[b.steps["phase"] == PREFILL][-1]
            ev_ns = int(st["kernel_ns"])
            iv = kineto_intervals(prof)
            sp = split_step(iv, int(st["dur_ns"]))
            if self.dry:
                verdict("cupti", "DRY", f"{dtype}: events Σ {ev_ns / 1e6:.2f} ms, {len(iv)} CUDA activities "
                        "(CPU profile: none)")
            else:
                ratio = ev_ns / sp.busy_ns if sp.busy_ns else float("inf")
                ok = abs(ratio - 1) <= 0.05
                verdict("cupti", "PASS" if ok else "FAIL",
                        f"{dtype}{' (TF32)' if ops.tf32 else ''} prefill {B}x{T}: CUDA events Σ "
                        f"{ev_ns / 1e6:.2f} ms vs CUPTI busy {sp.busy_ns / 1e6:.2f} ms ({ratio:.3f}x), "
                        f"GPU idle {sp.idle_ns / 1e6:.2f} ms, host {sp.host_ns / 1e6:.2f} ms")
            # decode, batch 1: every step sampled by the live sampler (item 1's path): busy / idle / host
            sm = StepSampler(every_s=0.0, profiler=lambda: torch.profiler.profile(activities=activities))
            attach_sampler(ops.recorder, sm)
            eng.generate(ids[:1], 9, chat=False)
            self.sync()
            attach_sampler(ops.recorder, None)
            ops.recorder.drain()
            dec = [s for _, s in list(sm.splits)[1:]]  # the prefill was sampled first
            if not dec:
                raise RuntimeError(f"the step sampler sampled nothing ({sm.errors} errors)")
            busy, idle, host, wall = (np.median([getattr(s, k) for s in dec]) / 1e6
                                      for k in ("busy_ns", "idle_ns", "host_ns", "wall_ns"))
            lb = sum(s.launch_bound for s in dec)
            verdict("cupti", self.tag or "INFO",
                    f"{dtype} decode batch 1, {len(dec)} sampled steps (median): wall {wall:.2f} ms = GPU "
                    f"busy {busy:.2f} + GPU idle {idle:.2f} + host {host:.2f}; "
                    f"launch-bound in {lb}/{len(dec)}")
            ops.close()
            del eng, ops

    def attribution(self) -> None:
        """The live path: TorchOps' own sampler (every 0.25 s here, 2 s by default) puts busy / idle on the
        sampled steps' rows, and the report's attribution carries them."""
        from llmtop.stats.aggregator import Aggregator

        ops = self.ops("bfloat16", True, sample_s=0.25)
        eng = Engine(self.small(), ops)
        agg = Aggregator(window_s=600)
        eng.generate(["warm up"], 4)
        self.sync()
        b = ops.recorder.drain()
        if b is not None:  # its names are sent once: the aggregator must see every batch
            agg.ingest(b)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < (3.0 if not self.dry else 0.5):
            eng.generate(["Write a long story about a dragon who learns to fly."], 64, chat=False)
            b = ops.recorder.drain()
            if b is not None:
                agg.ingest(b)
        ops.synchronize()
        b = ops.recorder.drain()
        if b is not None:
            agg.ingest(b)
        ops.close()
        att = agg.snapshot(mode="cumulative").report["attribution"]
        g = att["decode"]["gpu"]
        if g is None:
            v = "DRY" if self.dry else "FAIL"
            why = getattr(ops.recorder, "sampler", None)
            verdict("attribution", v, "no sampled decode step in the report's attribution"
                    + (" (CPU: no sampler, as expected)" if self.dry else f" (sampler: {why!r})"))
            return
        verdict("attribution", self.tag or "PASS",
                f"report attribution.decode.gpu: {g['sampled_steps']} sampled steps, busy "
                f"{g['busy_ms_per_step']:.2f} / idle {g['idle_ms_per_step']:.2f} / host "
                f"{g['host_ms_per_step']:.2f} ms per step, launch-bound: {g['launch_bound']}; events Σ/wall "
                f"{att['decode']['kernel_pct']:.0f} %")

    def overhead(self) -> None:
        n = 16 if self.dry else 128
        res = {}
        for timed in (False, True, False, True):
            ops = self.ops("bfloat16", timed, sample_s=2.0)  # timed as users run it: CUPTI every 2 s
            eng = Engine(self.small(), ops)
            eng.generate(["warm up"], 4)
            self.sync()
            t0 = time.perf_counter()
            g = eng.generate(["Write a long story about a dragon who learns to fly."], n,
                             sampling=SamplingParams(), chat=False)[0]
            self.sync()
            res.setdefault(timed, []).append(len(g.token_ids) / (time.perf_counter() - t0))
            ops.close()
        on, off = max(res[True]), max(res[False])
        cost = (off - on) / off
        v = self.tag or ("PASS" if cost <= 0.15 else "WARN")
        verdict("overhead", v, f"decode bf16 batch 1: {off:.0f} tok/s timing off, {on:.0f} tok/s on "
                f"({cost:+.1%} cost)")

    def agent(self) -> None:
        import transformers

        from llmtop.agent.core import Agent

        if self.dry:
            cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
            B, T, dev, dt = 2, 32, "cpu", torch.float32
        else:
            cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192,
                                           num_hidden_layers=16, num_attention_heads=32,
                                           num_key_value_heads=8)
            B, T, dev, dt = 8, 512, "cuda", torch.bfloat16
        with torch.device(dev):
            model = transformers.LlamaForCausalLM(cfg).to(dt).eval()
        agent = Agent("127.0.0.1:0")
        inst = agent.instrument(model)
        ids = torch.randint(3, cfg.vocab_size, (B, T), device=dev)
        rows = []
        with torch.no_grad():
            for i in range(4):
                self.sync()
                t0 = time.perf_counter_ns()
                model(ids)
                inst.close_step()  # at once: the host span ends before the GPU does
                self.sync()
                if i:
                    rows.append(time.perf_counter_ns() - t0)
        inst.remove()
        bs = [b for b in (r.drain() for r in agent._recorders) if b is not None]
        st = np.concatenate([b.steps for b in bs])[1:]
        ok_sum = bool((st["kernel_ns"] <= st["dur_ns"]).all())
        synced = float(np.median(rows))
        wall = float(np.median(st["dur_ns"]))
        ratio = wall / synced
        if self.dry:
            verdict("agent", "DRY" if ok_sum else "FAIL",
                    f"{len(st)} steps, Σ ops <= wall: {ok_sum}, wall/synchronized {ratio:.2f}")
            return
        ok = ok_sum and ratio >= 0.9
        verdict("agent", "PASS" if ok else "FAIL",
                f"HF Llama 16x2048 bf16 prefill {B}x{T}: step wall {wall / 1e6:.2f} ms vs synchronized "
                f"{synced / 1e6:.2f} ms ({ratio:.2f}x), Σ ops {np.median(st['kernel_ns']) / 1e6:.2f} ms "
                f"<= wall: {ok_sum}")

    def nvml(self) -> None:
        from llmtop.collectors.gpu import GpuCollector
        from llmtop.kernels.torch_backend import cuda_device_uuid

        uuid = None if self.dry else cuda_device_uuid()
        g = GpuCollector(uuid=uuid)
        if not g.available:
            verdict("nvml", "DRY" if self.dry else "FAIL", f"unavailable: {g.reason}")
            return
        (s, *_) = g.sample()
        g.close()
        want = {"util_pct", "mem_util_pct", "mem_used_bytes", "mem_total_bytes", "power_w", "sm_clock_mhz",
                "temp_c"}
        missing = sorted(want - set(s.values))
        name = torch.cuda.get_device_name() if not self.dry else ""
        same = not name or g.device_names == [name]
        v = s.values
        ok = not missing and same and g.note == ""
        verdict("nvml", self.tag or ("PASS" if ok else "FAIL"),
                f"{s.source} {g.device_names} (torch: {name or '-'}, uuid {uuid}): "
                f"util {v.get('util_pct')} %, mem {v.get('mem_used_bytes', 0) / 2**30:.1f}/"
                f"{v.get('mem_total_bytes', 0) / 2**30:.1f} GiB, "
                f"{v.get('power_w')} W, {v.get('sm_clock_mhz')} MHz, {v.get('temp_c')} C"
                + (f"; missing {missing}" if missing else "") + (f"; {g.note}" if g.note else ""))


LIMITS = {"tests": 180, "syncfree": 60, "cupti": 150, "attribution": 45, "overhead": 60, "agent": 60,
          "nvml": 15}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="run every item's code path on CPU")
    p.add_argument("--only", default="", help="comma-separated items (default: all)")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"SKIP  all: torch {torch.__version__} sees no CUDA GPU (run with --dry-run on CPU)")
        return 0
    chk = Check(args.dry_run)
    dev = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name()
    print(f"llmtop GPU check on {dev}; torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    items = [i for i in LIMITS if not args.only or i in args.only.split(",")]
    for item in items:
        run_item(item, getattr(chk, item), LIMITS[item] * (3 if args.dry_run else 1))
    bad = [r for r in RESULTS if r[1] == "FAIL"]
    print(f"summary: {len(RESULTS)} verdicts, {len(bad)} FAIL", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
