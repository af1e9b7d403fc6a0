"""A user's clone has no workspace `shared/` folder beside it: the fixture-dependent tests must pass there.

The working tree (tracked and untracked, not ignored files, so uncommitted work counts) is copied into a
temporary directory with nothing beside it, and the tests that read real third-party files run there
with the clone's own `llmtop` first on the path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_TESTS = ["test_import.py", "test_import_bad_input.py", "test_import_ranks.py", "test_prometheus.py",
                 "test_export.py", "test_npu_import.py"]
SHARED_REF = re.compile(r"""\.\./shared|parents\[2\]\s*/\s*["']shared["']""")


def _working_tree_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout ({e})")
    return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]


def test_no_test_or_benchmark_reads_the_shared_folder() -> None:
    offenders = []
    for f in _working_tree_files():
        if f.endswith(".py") and f.split("/")[0] in ("tests", "benchmarks", "llmtop"):
            text = (REPO / f).read_text(errors="replace")
            offenders += [f"{f}: {m.group(0)}" for m in SHARED_REF.finditer(text)]
    assert not offenders


@pytest.mark.slow
def test_fixture_tests_pass_in_a_bare_copy(tmp_path: Path) -> None:
    clone = tmp_path / "llmtop-clone"  # tmp_path holds nothing else: no shared/ beside the clone
    for f in _working_tree_files():
        dst = clone / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst)
    assert [p.name for p in tmp_path.iterdir()] == [clone.name]
    env = {**os.environ, "PYTHONPATH": str(clone)}
    where = subprocess.run([sys.executable, "-c", "import llmtop; print(llmtop.__file__)"], cwd=clone,
                           env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(clone)), where
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                        *[f"tests/{t}" for t in FIXTURE_TESTS]],
                       cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    assert re.search(r"\d+ passed", tail) and " failed" not in tail and " error" not in tail, tail
    assert "skipped" not in tail, tail  # every fixture is in the repository: nothing may skip
