"""benchmarks/gpu_check.sh --dry-run: every item of the prepared GPU check runs its code path on CPU, so the
script cannot rot between the runs on a GPU (issue 20, item 7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
ITEMS = ("tests", "syncfree", "cupti", "attribution", "overhead", "agent", "nvml")


@pytest.mark.slow
def test_gpu_check_dry_run():
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    verdicts = [ln.split(":", 1)[0].split() for ln in lines if ln[:5].strip() in ("DRY", "PASS", "FAIL")]
    assert {v[1] for v in verdicts} == set(ITEMS), lines
    assert all(v[0] == "DRY" for v in verdicts), lines
    assert lines[-1].startswith("summary:") and "0 FAIL" in lines[-1]
