"""`llmtop diff A B` against its anchor, the two imports it is made of: `llmtop report A` + `llmtop report B`.

    python benchmarks/bench_diff.py [--size-mb 100] [--runs 3] [A B]

Without files, two decode-loop Kineto traces of about --size-mb MB each are generated in /tmp (the
generator of bench_import.py: 32 and 28 layers, so most kernels differ in count and time). Per round,
interleaved after one untimed warm-up: `python -m llmtop report A --format json`, the same for B, and
`python -m llmtop diff A B --format json`, each the whole process timed from outside. Goal (issue 18):
diff ≤ 1.2 × (report A + report B). Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_import import generate  # noqa: E402


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
    return dt, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmtop-bench-diff-"))
    if args.files:
        a, b = args.files
    else:
        a, b = work / "a_rank0.json", work / "b_rank0.json"
        generate(a, args.size_mb, n_layers=32)
        generate(b, args.size_mb, n_layers=28)
    py = [sys.executable, "-m", "llmtop"]
    cmds = {"report A": [*py, "report", str(a), "--format", "json"],
            "report B": [*py, "report", str(b), "--format", "json"],
            "diff A B": [*py, "diff", str(a), str(b), "--format", "json"]}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    out = ""
    for i in range(args.runs + 1):
        for k, cmd in cmds.items():
            dt, text = timed(cmd)
            if i:
                times[k].append(dt)
            if k == "diff A B":
                out = text
    d = json.loads(out)
    med = {k: statistics.median(v) for k, v in times.items()}
    both = med["report A"] + med["report B"]
    mb = [p.stat().st_size / 1e6 for p in (a, b)]
    print(f"files: A {a.name} {mb[0]:.0f} MB, B {b.name} {mb[1]:.0f} MB; {args.runs} runs, medians; "
          f"diff rows {len(d['rows'])}, significant {d['significant_rows']}")
    print("| process | median s |")
    print("|---|---:|")
    for k, v in med.items():
        print(f"| `llmtop {k}` | {v:.2f} |")
    print(f"| report A + report B (anchor) | {both:.2f} |")
    print(f"\ndiff / (report A + report B) = {med['diff A B'] / both:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
