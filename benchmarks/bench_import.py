"""Kineto import: the whole `llmtop report FILE --format json` process against Holistic Trace Analysis.

    python benchmarks/bench_import.py [FILE ...] [--runs 3] [--hta-python .venv-bench/bin/python]
                                      [--no-hta] [--size-mb 0] [--json out.json] [--candidates]

For each file, interleaved over --runs rounds (after one untimed warm-up round), three children:

- llmtop: `python -m llmtop report FILE --format json`, the whole process timed from outside (start-up,
  imports, reading, statistics and the JSON on stdout), peak RSS from wait4. Bytecode caches are on
  (PYTHONPYCACHEPREFIX in a temporary folder), as for an installed package.
- HTA (HolisticTraceAnalysis 0.5.0 in its own venv, `pandas<3`): `TraceAnalysis(trace_dir=...)` and
  `get_gpu_kernel_breakdown()` timed inside its process (its imports of pandas and friends not counted).
- floor: gzip decompression and one msgspec decode of every event into the same typed fields llmtop
  reads, timed inside a bare process (no llmtop): what any reader on this library pays at least.

Medians are printed; MB are 10^6 bytes (file sizes uncompressed, RSS from ru_maxrss). Every llmtop
report is checked against an independent pass over the raw events (stdlib json, exact decimal µs):
per kernel name, the count and the total time of the device events (or, for a CPU-only trace, of each
thread's outermost cpu_ops) must equal the report's kernel table.
Files: the repository's Kineto fixtures (tests/fixtures/kineto, see SOURCES.md), any FILE given (e.g.
the large MTIA and MI300X traces kept outside the repository), and with --size-mb a generated
decode-loop trace in /tmp.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "kineto").glob("*.json.gz"))
DEFAULT_HTA_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
# Kineto's device-side categories (libkineto ActivityType names), for the independent count
DEVICE_CATS = {"kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "Memset", "mtia_ccp_events",
               "mlu_memcpy", "mlu_memset", "gcu_memcpy", "gcu_memset", "GCU_MEMCPY", "GCU_MEMSET"}

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


CHILD_HTA = """
import json, logging, resource, sys, time, warnings
logging.disable(logging.CRITICAL)
warnings.filterwarnings("ignore")
from hta.trace_analysis import TraceAnalysis
t0 = time.perf_counter()
a = TraceAnalysis(trace_dir=sys.argv[1])
t1 = time.perf_counter()
a.get_gpu_kernel_breakdown(visualize=False)
t2 = time.perf_counter()
dev = sum(int((df["stream"] != -1).sum()) for df in a.t.traces.values())
print(json.dumps({"s": t2 - t0, "load_s": t1 - t0, "breakdown_s": t2 - t1, "device_events": dev,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

CHILD_FLOOR = """
import json, resource, struct, sys, time, zlib
from typing import Any
import msgspec
class Args(msgspec.Struct, gc=False):
    correlation: Any = None
    device: Any = None
    stream: Any = None
class Ev(msgspec.Struct, gc=False):
    ph: Any = None
    cat: Any = None
    name: Any = None
    pid: Any = None
    tid: Any = None
    ts: Any = None
    dur: Any = None
    id: Any = None
    args: Args | str | int | float | bool | list | None = None
Item = Ev | str | int | float | bool | list | None
class Top(msgspec.Struct, gc=False):
    traceEvents: list[Item] = []
t0 = time.perf_counter()
raw = open(sys.argv[1], "rb").read()
doc = zlib.decompress(raw, 31, struct.unpack("<I", raw[-4:])[0]) if raw[:2] == b"\\x1f\\x8b" else raw
t1 = time.perf_counter()
top = msgspec.json.Decoder(Top | list[Item], float_hook=str).decode(doc)
n = len(top.traceEvents if isinstance(top, Top) else top)
t2 = time.perf_counter()
print(json.dumps({"s": t2 - t0, "decompress_s": t1 - t0, "parse_s": t2 - t1, "events": n,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


# --candidates: the JSON libraries considered for the reader, each decompressing and parsing the whole
# file into Python objects (ijson streams it); run with the HTA venv's python, which has them all
CHILD_CANDIDATE = """
import gzip, json, resource, struct, sys, time, zlib
kind, path = sys.argv[1], sys.argv[2]
def doc():
    raw = open(path, "rb").read()
    return zlib.decompress(raw, 31, struct.unpack("<I", raw[-4:])[0]) if raw[:2] == b"\\x1f\\x8b" else raw
t = time.perf_counter()
if kind == "json":
    n = len(json.loads(doc(), parse_float=str)["traceEvents"])
elif kind == "orjson":
    import orjson
    n = len(orjson.loads(doc())["traceEvents"])
elif kind == "ijson":
    import ijson
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        n = sum(1 for _ in ijson.items(f, "traceEvents.item"))
elif kind == "msgspec":
    import msgspec
    n = len(msgspec.json.decode(doc())["traceEvents"])
print(json.dumps({"s": time.perf_counter() - t, "events": n,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
CHILD_LLMTOP_READER = """
import json, resource, sys, time
from pathlib import Path
from llmtop.traces.json_stream import WalkStatus, read_bytes, walk
from llmtop.traces.importers.kineto import _Item
t = time.perf_counter()
doc, _ = read_bytes(Path(sys.argv[1]))
n = sum(len(v) for k, v in walk(doc, "traceEvents", _Item, (), WalkStatus()) if k == "items")
print(json.dumps({"s": time.perf_counter() - t, "events": n,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
CANDIDATES = ("json", "orjson", "msgspec", "ijson")


def candidates(files: list[Path], py: str, runs: int) -> None:
    """Decompress + parse with each candidate library: medians of time and peak RSS."""
    res: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for _ in range(runs):
        for f in files:
            for kind in (*CANDIDATES, "floor", "llmtop-reader"):
                if kind == "floor":
                    r = run([sys.executable, "-c", CHILD_FLOOR, str(f)], 600)
                elif kind == "llmtop-reader":
                    r = run([sys.executable, "-c", CHILD_LLMTOP_READER, str(f)], 600)
                else:
                    r = run([py, "-c", CHILD_CANDIDATE, kind, str(f)], 600)
                res[(f.name, kind)].append(json.loads(r["out"]) if "out" in r else r)
    labels = {"json": "stdlib json (parse_float=str)", "orjson": "orjson", "msgspec": "msgspec, untyped",
              "ijson": "ijson yajl2_c, streaming", "floor": "msgspec, typed fields, one decode",
              "llmtop-reader": "msgspec, typed fields, 2 MB chunks (llmtop)"}
    print(f"{'file':44} {'reader':44} {'s':>6} {'RSS MB':>7} {'RSS/file':>8}")
    for f in files:
        mb = uncompressed_size(f) / 1e6
        for kind in (*CANDIDATES, "floor", "llmtop-reader"):
            ok = [x for x in res[(f.name, kind)] if "s" in x]
            if not ok:
                print(f"{f.name[:44]:44} {labels[kind]:44} {res[(f.name, kind)][0].get('error', '?')}")
                continue
            rss = med([x["rss_kb"] * 1024 / 1e6 for x in ok])
            print(f"{f.name[:44]:44} {labels[kind]:44} {med([x['s'] for x in ok]):6.2f} {rss:7.0f} "
                  f"{rss / mb:8.2f}")


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a child; {"wall_s", "rss_kb", "out"} or {"error"}. Peak RSS of this child alone (wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = t + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                p.wait()
                return {"error": f"timeout after {timeout:.0f}s"}
            time.sleep(0.002)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            lines = err.read().decode(errors="replace").strip().splitlines() or [f"exit {p.returncode}"]
            return {"error": lines[-1][:200]}
        return {"wall_s": wall, "rss_kb": ru.ru_maxrss, "out": out.read().decode()}


def load_events(path: Path) -> list[dict]:
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        doc = json.load(f, parse_float=Decimal)
    return doc["traceEvents"] if isinstance(doc, dict) else doc


def ns(v: Any) -> int:
    return int(Decimal(str(v)) * 1000)


def independent_table(path: Path) -> tuple[dict[str, tuple[int, int]], int, str]:
    """{name: (count, total ns)} from the raw events, the uncompressed size, and what was counted."""
    events = [e for e in load_events(path) if isinstance(e, dict) and e.get("ph") == "X"]
    dev = [e for e in events if e.get("cat") in DEVICE_CATS]
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    if dev:
        for e in dev:
            table[e["name"]][0] += 1
            table[e["name"]][1] += ns(e["dur"])
        what = f"{len(dev)} device events"
    else:
        by_thread: dict[tuple, list] = defaultdict(list)
        for e in events:
            if e.get("cat") == "cpu_op":
                t0 = ns(e["ts"])
                by_thread[(e["pid"], e["tid"])].append((t0, t0 + ns(e["dur"]), e["name"]))
        n = 0
        for evs in by_thread.values():
            evs.sort(key=lambda x: (x[0], -x[1]))
            end = None
            for t0, t1, name in evs:
                if end is None or t0 >= end:
                    table[name][0] += 1
                    table[name][1] += t1 - t0
                    n += 1
                end = t1 if end is None else max(end, t1)
        what = f"{n} outermost cpu_ops"
    return {k: (c, t) for k, (c, t) in table.items()}, 0, what


def check(report: dict, want: dict[str, tuple[int, int]]) -> str:
    got: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for k in report["kernels"]:
        got[k["name"]][0] += k["count"]
        got[k["name"]][1] += k["total_ms"]
    if set(got) != set(want):
        return f"names differ ({len(set(got) ^ set(want))})"
    for name, (c, t) in want.items():
        gc, gt = got[name]
        if gc != c or abs(gt * 1e6 - t) > max(1.0, t * 1e-9):
            return f"{name[:40]}: {gc} / {gt * 1e6:.0f} ns vs {c} / {t} ns"
    return "ok"


def uncompressed_size(path: Path) -> int:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if gz:
        with gzip.open(path) as g:
            return sum(len(c) for c in iter(lambda: g.read(1 << 20), b""))
    return path.stat().st_size


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="more Kineto trace files (.json, .json.gz)")
    ap.add_argument("--runs", type=int, default=3, help="timed rounds, interleaved (default 3)")
    ap.add_argument("--hta-python", type=Path, default=DEFAULT_HTA_PYTHON,
                    help="python of a venv with HolisticTraceAnalysis==0.5.0 and pandas<3 "
                         "(default .venv-bench/bin/python)")
    ap.add_argument("--no-hta", action="store_true")
    ap.add_argument("--hta-timeout", type=float, default=1200)
    ap.add_argument("--size-mb", type=int, default=0, help="also a generated trace of this size (0 = none)")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    ap.add_argument("--candidates", action="store_true",
                    help="instead: decompress + parse with each JSON library considered (json, orjson, "
                         "msgspec, ijson; from the --hta-python venv) and with llmtop's reader")
    args = ap.parse_args()
    missing = [str(f) for f in args.files if not f.exists()]
    if missing:
        sys.exit(f"bench_import: no such file: {', '.join(missing)}")
    files = FIXTURES + list(args.files)
    if args.candidates:
        candidates(list(args.files) or files, str(args.hta_python), args.runs)
        return
    work = Path(tempfile.mkdtemp(prefix="llmtop_bench_"))
    if args.size_mb:
        gen = work / "generated_rank0.json"
        n = generate(gen, args.size_mb)
        print(f"generated {gen} ({gen.stat().st_size / 1e6:.0f} MB, {n} events)", flush=True)
        files.append(gen)
    hta_py = str(args.hta_python)
    have_hta = not args.no_hta and args.hta_python.exists() and subprocess.run(
        [hta_py, "-c", "import hta.trace_analysis"], capture_output=True).returncode == 0
    if not args.no_hta and not have_hta:
        print(f"HTA not runnable with {hta_py}: python -m venv .venv-bench && .venv-bench/bin/pip install "
              "'HolisticTraceAnalysis==0.5.0' 'pandas<3' msgspec", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    hta_dirs = {}
    for f in files:
        d = work / ("hta_" + f.name.replace(".", "_"))
        d.mkdir()
        os.symlink(f.resolve(), d / (f.name if f.name.endswith((".json", ".json.gz")) else f.name + ".json"))
        hta_dirs[f] = d
    res: dict[Path, dict[str, list[dict]]] = {f: defaultdict(list) for f in files}
    for rnd in range(args.runs + 1):  # round 0 warms the page cache and the bytecode caches
        for f in files:
            ours = run([sys.executable, "-m", "llmtop", "report", str(f), "--format", "json"], 3600, env)
            floor = run([sys.executable, "-c", CHILD_FLOOR, str(f)], 3600)
            hta = run([hta_py, "-c", CHILD_HTA, str(hta_dirs[f])], args.hta_timeout) if have_hta else {}
            if rnd:
                res[f]["llmtop"].append(ours)
                res[f]["floor"].append(floor)
                res[f]["hta"].append(hta)
            print(f"round {rnd}: {f.name}: llmtop {ours.get('wall_s', ours.get('error'))}", file=sys.stderr,
                  flush=True)
    rows = []
    for f in files:
        want, _, what = independent_table(f)
        mb = uncompressed_size(f) / 1e6
        r = res[f]
        ok_runs = [x for x in r["llmtop"] if "error" not in x]
        verdict = check(json.loads(ok_runs[0]["out"]), want) if ok_runs else r["llmtop"][0]["error"]
        floors = [json.loads(x["out"]) | {"wall_s": x["wall_s"]} for x in r["floor"] if "error" not in x]
        htas = [json.loads(x["out"]) for x in r["hta"] if x and "error" not in x]
        hta_err = next((x["error"] for x in r["hta"] if x and "error" in x), "" if have_hta else "not run")
        row = {
            "file": f.name, "mb": mb, "counted": what, "check": verdict,
            "llmtop_s": med([x["wall_s"] for x in ok_runs]),
            "llmtop_rss_mb": med([x["rss_kb"] * 1024 / 1e6 for x in ok_runs]),
            "floor_parse_s": med([x["s"] for x in floors]),
            "floor_process_s": med([x["wall_s"] for x in floors]),
            "floor_rss_mb": med([x["rss_kb"] * 1024 / 1e6 for x in floors]),
            "hta_s": med([x["s"] for x in htas]), "hta_load_s": med([x["load_s"] for x in htas]),
            "hta_rss_mb": med([x["rss_kb"] * 1024 / 1e6 for x in htas]),
            "hta_device_events": htas[0]["device_events"] if htas else None, "hta_error": hta_err,
            "runs": len(ok_runs),
        }
        rows.append(row)
    hdr = (f"{'file':44} {'MB':>6} {'llmtop s':>8} {'RSS MB':>7} {'RSS/file':>8} {'HTA s':>7} {'HTA RSS':>7} "
           f"{'ratio':>6} {'floor s':>7} {'floor proc':>10} {'vs floor':>8}  check")
    print(hdr)
    for row in rows:
        ratio = row["llmtop_s"] / row["hta_s"] if row["hta_s"] == row["hta_s"] else float("nan")
        print(f"{row['file'][:44]:44} {row['mb']:6.1f} {row['llmtop_s']:8.2f} {row['llmtop_rss_mb']:7.0f} "
              f"{row['llmtop_rss_mb'] / row['mb']:8.2f} {row['hta_s']:7.2f} {row['hta_rss_mb']:7.0f} "
              f"{ratio:6.3f} {row['floor_parse_s']:7.2f} {row['floor_process_s']:10.2f} "
              f"{row['llmtop_s'] / row['floor_process_s']:7.1f}x  {row['check']} ({row['counted']}"
              + (f"; HTA: {row['hta_device_events']} device events" if row["hta_device_events"] is not None
                 else f"; HTA: {row['hta_error']}") + ")")
    print(f"medians of {args.runs} interleaved runs; ratio = llmtop process / HTA load + breakdown "
          "(goal <= 0.1); RSS/file = peak RSS / uncompressed JSON (goal <= 2); floor = decompress + msgspec "
          "decode in a bare process (s: inside it, proc: the whole process)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
