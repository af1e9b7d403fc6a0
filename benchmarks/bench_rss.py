"""Peak RSS of `llmtop --once` on SmolLM2 fp32 (default model), measured from the parent with
resource.getrusage(RUSAGE_CHILDREN).ru_maxrss. Goal: <= 1 GB.

Usage: python benchmarks/bench_rss.py [--tokens 32]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "llmtop", "--once", "--prompt", "Tell me about the moon.",
           "--max-new-tokens", str(a.tokens), "--dtype", "float32", "--format", "json"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    print(f"command: {' '.join(cmd)}\n")
    print("| run | peak RSS (MiB) | goal |")
    print("|---|---|---|")
    print(f"| llmtop --once SmolLM2-135M fp32, {a.tokens} tokens | {peak_mb:.0f} | <= 1024 |")


if __name__ == "__main__":
    main()
