"""Import throughput and peak memory: llmtop's importers vs Holistic Trace Analysis on the same files.

    python benchmarks/bench_import.py [FILE ...] [--size-mb 500] [--no-hta] [--hta-timeout 1200]
                                      [--json out.json]

Each load runs in its own subprocess so that peak RSS (ru_maxrss of that child) belongs to one loader.
Files: the repository's real fixtures (tests/fixtures/, see its SOURCES.md), any FILE given (e.g. the
large MI300X and MTIA Kineto traces kept outside the repository), plus a generated Kineto trace of
--size-mb MB (written to /tmp, never committed) shaped like a decode run: ProfilerStep# annotations,
nn.Module DecoderLayer ranges, cpu_op -> cudaLaunchKernel -> kernel with correlation ids and ac2g flows.
HTA (`holistictraceanalysis` from PyPI) loads the same Kineto files with `TraceAnalysis(trace_dir=...)`,
its documented entry point.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
FIXTURES = [
    REPO_FIXTURES / "kineto/hta_a100_simple_add.json.gz",
    REPO_FIXTURES / "kineto/tracelens_mi300x_sglang_qwen3_8b_decode.json.gz",
    REPO_FIXTURES / "kineto/vllm_cpu_0.32_worker_rank0.pt.trace.json.gz",
    REPO_FIXTURES / "nsys/pipit_a100_saxpy_mpi.sqlite",
]
KERNELS = [
    ("void at::native::rms_norm_kernel<c10::BFloat16>", "aten::rms_norm"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_qkv", "aten::linear"),
    ("void rotary_embedding_kernel<c10::BFloat16, true>", "_C::rotary_embedding"),
    ("void reshape_and_cache_flash_kernel<__nv_bfloat16>", "_C::reshape_and_cache_flash"),
    ("flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4>>", "vllm::unified_attention"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x128x64_o_proj", "aten::linear"),
    ("void at::native::vectorized_elementwise_kernel<4, add>", "aten::add"),
    ("void at::native::rms_norm_kernel<c10::BFloat16>", "aten::rms_norm"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_gate_up", "aten::linear"),
    ("void act_and_mul_kernel<c10::BFloat16, silu>", "_C::silu_and_mul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_down", "aten::linear"),
    ("void at::native::vectorized_elementwise_kernel<4, add>", "aten::add"),
]


def generate(path: Path, size_mb: int, n_layers: int = 32) -> int:
    """Write a Kineto JSON trace of about size_mb MB; returns the number of trace events."""
    target = size_mb << 20
    n = 0
    corr = 1
    t = 1_700_000_000_000_000  # µs
    pid, tid = 4242, 4242
    with open(path, "w") as f:
        f.write(
            '{\n  "schemaVersion": 1,\n'
            '  "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 1},\n'
            '  "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 85045231616,'
            ' "computeMajor": 9, "computeMinor": 0, "numSms": 132}],\n  "traceEvents": [\n'
        )
        first = True
        step = 0
        while f.tell() < target:
            step_start, gpu_t = t, t + 50
            out = []
            for layer in range(n_layers):
                l_start = t
                for kname, op in KERNELS:
                    d_cpu, d_gpu = 7.123 + (corr % 5), 11.456 + (corr % 13) * 0.731 + layer * 0.01
                    out.append(
                        f'{{"ph": "X", "cat": "cpu_op", "name": "{op}", "pid": {pid}, "tid": {tid}, '
                        f'"ts": {t}.{corr % 997:03d}, "dur": {d_cpu:.3f}, "args": {{"External id": {corr},'
                        f' "Record function id": 0, "Ev Idx": {n}}}}}'
                    )
                    out.append(
                        f'{{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": {pid}, '
                        f'"tid": {tid}, "ts": {t + 1}.{corr % 991:03d}, "dur": 4.112, "args": '
                        f'{{"External id": {corr}, "cbid": 211, "correlation": {corr}}}}}'
                    )
                    out.append(
                        f'{{"ph": "s", "id": {corr}, "pid": {pid}, "tid": {tid}, "ts": {t + 1}.'
                        f'{corr % 991:03d}, "cat": "ac2g", "name": "ac2g"}}'
                    )
                    gpu_t = max(gpu_t, t + 3)
                    out.append(
                        f'{{"ph": "X", "cat": "kernel", "name": "{kname}", "pid": 0, "tid": 7, '
                        f'"ts": {gpu_t}.{corr % 983:03d}, "dur": {d_gpu:.3f}, "args": {{"External id": '
                        f'{corr}, "queued": 0, "device": 0, "context": 1, "stream": 7, "correlation": '
                        f'{corr}, "registers per thread": 128, "shared memory": 0, "blocks per SM": '
                        f'1.5, "warps per SM": 12.0, "grid": [132, 1, 1], "block": [256, 1, 1], '
                        f'"est. achieved occupancy %": 19}}}}'
                    )
                    out.append(
                        f'{{"ph": "f", "id": {corr}, "pid": 0, "tid": 7, "ts": {gpu_t}.{corr % 983:03d}, '
                        f'"cat": "ac2g", "name": "ac2g", "bp": "e"}}'
                    )
                    gpu_t += 13
                    t += 9
                    corr += 1
                    n += 5
                out.append(
                    f'{{"ph": "X", "cat": "python_function", "name": "nn.Module: LlamaDecoderLayer_{layer}",'
                    f' "pid": {pid}, "tid": {tid}, "ts": {l_start}.000, "dur": {t - l_start - 0.5:.3f}, '
                    f'"args": {{"Python id": {corr}, "Python parent id": 1}}}}'
                )
                n += 1
            out.append(
                f'{{"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#{step}", "pid": {pid}, '
                f'"tid": {tid}, "ts": {step_start}.000, "dur": {t - step_start + 2}.000, "args": '
                f'{{"External id": {corr}}}}}'
            )
            n += 1
            step += 1
            t = max(t, gpu_t) + 100
            f.write(("" if first else ",\n") + ",\n".join(out))
            first = False
        f.write(
            '\n  ],\n  "traceName": "generated.json",\n  "displayTimeUnit": "ms",\n'
            '  "baseTimeNanoseconds": 1700000000000000000\n}\n'
        )
    return n


CHILD_LLMTOP = """
import json, resource, sys, time
from llmtop.traces.open import open_trace
t = time.perf_counter()
r = open_trace(sys.argv[1])
n_k = n_s = 0
for b in r.batches:
    n_k += len(b.kernels); n_s += len(b.steps)
dt = time.perf_counter() - t
print(json.dumps({"s": dt, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "kernels": n_k,
                  "steps": n_s, "records": r.source.extra.get("records", 0)}))
"""

CHILD_HTA = """
import json, logging, resource, sys, time
logging.disable(logging.CRITICAL)
from hta.trace_analysis import TraceAnalysis
t = time.perf_counter()
a = TraceAnalysis(trace_dir=sys.argv[1])
dt = time.perf_counter() - t
n = sum(len(df) for df in a.t.traces.values())
print(json.dumps({"s": dt, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rows": n}))
"""


def run_child(code: str, arg: str, timeout: float) -> dict:
    try:
        p = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit " + str(p.returncode)])[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def uncompressed_size(path: Path) -> int:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if gz:
        with gzip.open(path) as g:
            return sum(len(c) for c in iter(lambda: g.read(1 << 20), b""))
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", type=Path,
                    help="more trace files to load (Kineto JSON or nsys SQLite)")
    ap.add_argument("--size-mb", type=int, default=500, help="size of the generated Kineto trace (0 = skip)")
    ap.add_argument("--no-hta", action="store_true")
    ap.add_argument("--hta-timeout", type=float, default=1200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    missing = [str(f) for f in args.files if not f.exists()]
    if missing:
        sys.exit(f"bench_import: no such file: {', '.join(missing)}")
    files = FIXTURES + list(args.files)
    work = Path(tempfile.mkdtemp(prefix="llmtop_bench_"))
    if args.size_mb:
        gen = work / "generated_rank0.json"
        t = time.perf_counter()
        n = generate(gen, args.size_mb)
        print(
            f"generated {gen} ({gen.stat().st_size / 2**20:.0f} MB, {n} events) "
            f"in {time.perf_counter() - t:.1f}s",
            flush=True,
        )
        files.append(gen)
    have_hta = (
        not args.no_hta
        and subprocess.run(
            [sys.executable, "-c", "import hta.trace_analysis"], capture_output=True
        ).returncode
        == 0
    )
    rows = []
    hdr = (
        f"{'file':44} {'MB':>7} {'events':>9} {'llmtop s':>9} {'MB/s':>7} {'ev/s':>9} {'RSS MB':>7} "
        f"{'RSS/file':>8} {'HTA s':>8} {'HTA RSS':>8} {'speedup':>8}"
    )
    print(hdr)
    for f in files:
        mb = uncompressed_size(f) / 2**20
        ours = run_child(CHILD_LLMTOP, str(f), 3600)
        hta: dict = {"error": "not run"}
        if have_hta and f.suffix != ".sqlite":
            d = work / ("hta_" + f.name.replace(".", "_"))
            d.mkdir(exist_ok=True)
            link = d / (f.name if f.name.endswith((".json", ".json.gz")) else f.name + ".json")
            if not link.exists():
                os.symlink(f, link)
            hta = run_child(CHILD_HTA, str(d), args.hta_timeout)
        row = {"file": f.name, "mb": round(mb, 2), "llmtop": ours, "hta": hta}
        rows.append(row)
        if "error" in ours:
            print(f"{f.name[:44]:44} llmtop error: {ours['error']}")
            continue
        rss = ours["rss_kb"] / 1024
        speed = f"{hta['s'] / ours['s']:.1f}x" if "s" in hta else "-"
        print(
            f"{f.name[:44]:44} {mb:7.1f} {ours['records']:9d} {ours['s']:9.2f} {mb / ours['s']:7.1f} "
            f"{ours['records'] / ours['s']:9.0f} {rss:7.0f} {rss / max(mb, 1e-9):8.2f} "
            f"{hta.get('s', float('nan')):8.2f} {hta.get('rss_kb', 0) / 1024:8.0f} {speed:>8}"
            + (f"  (HTA: {hta['error']})" if "error" in hta and have_hta and f.suffix != ".sqlite" else ""),
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
