"""Several ranks side by side: `open_traces` merges per-rank trace files, the report gets `tracks`.

The second rank is the real HTA A100 fixture with its distributedInfo.rank rewritten to 1; every
number is checked against a plain JSON walk of the fixture.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import defaultdict
from contextlib import redirect_stdout
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixture_paths import HTA_A100 as HTA
from fixture_paths import NSYS_A100 as NSYS

from llmtop.cli import main
from llmtop.collectors.replay import load_into
from llmtop.errors import LlmtopError
from llmtop.events import NameTable
from llmtop.stats.aggregator import Aggregator
from llmtop.traces.open import ImportResult, open_trace, open_trace_file, open_traces

DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}

def _doc() -> dict[str, Any]:
    with gzip.open(HTA) as f:
        return json.load(f, parse_float=Decimal)


def _us_ns(v: object) -> int:
    return int(Decimal(str(v)) * 1000)


def _per_stream() -> dict[tuple[int, int], tuple[int, int]]:
    """(device, stream) -> (kernel count, total ns): the independent walk."""
    out: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for e in _doc()["traceEvents"]:
        if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS:
            k = (e["args"]["device"], e["args"]["stream"])
            out[k][0] += 1
            out[k][1] += _us_ns(e["dur"])
    return {k: (v[0], v[1]) for k, v in out.items()}


def _write_rank(tmp_path: Path, rank: int, name: str | None = None) -> Path:
    d = _doc()
    assert d["distributedInfo"]["rank"] == 0
    d["distributedInfo"]["rank"] = rank
    p = tmp_path / (name or f"rank{rank}.json")
    p.write_text(json.dumps(d, default=str))  # Decimal -> its exact text, as the file had it
    return p


def _collect(r: ImportResult) -> tuple[np.ndarray, np.ndarray, NameTable]:
    names = NameTable()
    ks, ss = [], []
    for b in r.batches:
        names.extend(b.names_base, b.new_names)
        ks.append(b.kernels)
        ss.append(b.steps)
    return np.concatenate(ks), np.concatenate(ss), names


@pytest.fixture(scope="module")
def ranks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ranks")
    (d / "rank0.json.gz").write_bytes(HTA.read_bytes())
    _write_rank(d, 1)
    (d / "notes.txt").write_text("not a trace\n")  # a directory listing also holds other files
    return d


def test_two_ranks_side_by_side(ranks_dir: Path) -> None:
    single_k, single_s, _ = _collect(open_trace(HTA))
    r = open_traces([ranks_dir / "rank0.json.gz", ranks_dir / "rank1.json"])
    ks, st, names = _collect(r)
    assert len(ks) == 2 * len(single_k)
    assert len(st) == 2 * len(single_s)
    assert len(names) == len(set(names.names))  # one table, no name twice

    walk = _per_stream()
    tracks = r.source.extra["tracks"]
    assert len(tracks) == 2 * len(walk)
    assert sorted(t["track"] for t in tracks) == list(range(len(tracks)))
    assert {t["rank"] for t in tracks} == {0, 1}
    for t in tracks:
        assert t["label"] == f"rank {t['rank']} · GPU {t['device']} · stream {t['stream']}"
        mine = ks[ks["track"] == t["track"]]
        n, ns = walk[(t["device"], t["stream"])]
        assert (len(mine), int(mine["dur_ns"].sum())) == (n, ns)
    ranks = r.source.extra["ranks"]
    assert [(x["rank"], Path(x["file"]).name) for x in ranks] == [(0, "rank0.json.gz"), (1, "rank1.json")]
    assert all(x["device"] == "NVIDIA A100-PG509-200" for x in ranks)
    # steps stay on their rank's tracks, and each rank's steps hold exactly that rank's kernels
    rank_of = {t["track"]: t["rank"] for t in tracks}
    for s in st:
        rank = rank_of[int(s["track"])]
        on_rank = np.isin(ks["track"], [t for t, rk in rank_of.items() if rk == rank])
        mine = ks[on_rank & (ks["step"] == s["step"])]
        assert int(mine["dur_ns"].sum()) == int(s["kernel_ns"])
    # interleaved by start time (batches), both ranks from the first batch on
    assert set(np.unique(ks["track"]).tolist()) == set(rank_of)


def test_directory_and_replay_paths(ranks_dir: Path) -> None:
    tf = open_trace_file(ranks_dir)
    assert len(tf.source.extra["ranks"]) == 2
    assert any("notes.txt" in w for w in tf.warnings)
    agg = Aggregator()
    summary = load_into([ranks_dir / "rank0.json.gz", ranks_dir / "rank1.json"], agg)
    rep = agg.snapshot(mode="cumulative").report
    walk = _per_stream()
    assert rep["events"] == 2 * sum(n for n, _ in walk.values())
    assert summary.events == rep["events"] + rep["tokens"]["decode_steps"] + rep["tokens"]["prefills"]
    assert len(rep["tracks"]) == 2 * len(walk)
    for row in rep["tracks"]:
        dev_stream = next((t["device"], t["stream"]) for t in tf.source.extra["tracks"]
                          if t["track"] == row["track"])
        n, ns = walk[dev_stream]
        assert row["kernels"] == n
        assert row["kernel_ms"] == pytest.approx(ns / 1e6)
    assert sum(row["steps"] for row in rep["tracks"]) == rep["tokens"]["decode_steps"]
    # one path in a list is the single-file path (its old SourceInfo, ranks as a list of ints)
    assert open_trace_file([HTA]).source.extra["ranks"] == [0]


def test_cli_report_json_tracks(ranks_dir: Path) -> None:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["report", str(ranks_dir / "rank0.json.gz"), str(ranks_dir / "rank1.json"),
                   "--format", "json"])
    assert rc == 0
    rep = json.loads(buf.getvalue())
    labels = [t["label"] for t in rep["tracks"]]
    assert any(x.startswith("rank 0 · GPU 0") for x in labels)
    assert any(x.startswith("rank 1 · GPU 0") for x in labels)
    assert {"kernels", "kernel_ms", "steps", "decode_tok_s"} <= set(rep["tracks"][0])
    assert rep["events"] == 2 * sum(n for n, _ in _per_stream().values())
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["report", str(ranks_dir), "--format", "markdown"]) == 0
    text = buf.getvalue()
    assert "## Tracks" in text and "rank 1 · GPU 0 · stream" in text


def test_cli_export_several(ranks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    files = [str(ranks_dir / "rank0.json.gz"), str(ranks_dir / "rank1.json")]
    assert main(["export", *files, "-o", str(out)]) == 0
    ev = json.loads(out.read_text())
    ev = ev["traceEvents"] if isinstance(ev, dict) else ev
    xs = [e for e in ev if e.get("ph") == "X" and e.get("cat") != "step"]
    n_tracks = 2 * len(_per_stream())
    assert len(xs) == 2 * sum(n for n, _ in _per_stream().values())
    assert {e["pid"] for e in xs} == set(range(1, n_tracks + 1))  # one process per rank/stream track


def test_same_rank_twice_and_bad_input(tmp_path: Path) -> None:
    a = _write_rank(tmp_path, 0, "a.json")
    b = _write_rank(tmp_path, 0, "b.json")
    r = open_traces([a, b])
    labels = [t["label"] for t in r.source.extra["tracks"]]
    assert len(set(labels)) == len(labels)  # same rank in two files: told apart by file name
    assert any("(b.json)" in x for x in labels)
    assert any("several files say rank 0" in w for w in r.warnings)
    with pytest.raises(LlmtopError, match="twice"):
        open_traces([a, a])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LlmtopError, match="no trace files"):
        open_traces([empty])
    with pytest.raises(LlmtopError, match="no such file"):
        open_traces([a, tmp_path / "missing.json"])


@pytest.mark.skipif(not NSYS.exists(), reason="nsys fixture not present")
def test_kineto_and_nsys_together() -> None:
    k1, _, _ = _collect(open_trace(HTA))
    k2, _, _ = _collect(open_trace(NSYS))
    r = open_traces([HTA, NSYS])
    ks, _, _ = _collect(r)
    assert len(ks) == len(k1) + len(k2)
    n1 = len(np.unique(k1["track"]))
    assert set(np.unique(ks["track"]).tolist()) == set(range(n1 + len(np.unique(k2["track"]))))
    assert sorted(x["format"] for x in r.source.extra["ranks"]) == ["kineto", "nsys"]
    assert r.source.backend == "kineto+nsys"
