"""`llmtop attach --targets FILE` (issue 16): one URL per line, `#` comments, re-read when the file changes
(targets added start being scraped, removed ones stop); a bad file is one error line, never a traceback.
Real HTTP servers on 127.0.0.1 replay the real vLLM capture."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixture_paths import PROMETHEUS_DIR

from llmtop.attach import build_attach_pipeline, server_table
from llmtop.attach.targets import parse_targets, read_targets
from llmtop.errors import LlmtopError
from llmtop.stats import Aggregator

ROOT = Path(__file__).resolve().parents[1]
BODY = (PROMETHEUS_DIR / "vllm_cpu_0.32_after_requests.txt").read_bytes()


def _server() -> http.server.ThreadingHTTPServer:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _wait(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # what editors and config tools do: the watcher sees a new file


def test_parse_targets() -> None:
    text = "# replicas\n\nhttp://10.0.0.1:8000/metrics  # rank 0\nllmtop://127.0.0.1:7070\n127.0.0.1:7071\n" \
           "http://10.0.0.1:8000/metrics\n"
    assert parse_targets(text, "f") == ["http://10.0.0.1:8000/metrics", "llmtop://127.0.0.1:7070",
                                        "127.0.0.1:7071"]
    for bad in ("ftp://x:1", "not a url", "http://", "localhost"):
        with pytest.raises(LlmtopError, match=r"^f:2: not a target URL"):
            parse_targets(f"http://a:1\n{bad}\n", "f")


def test_targets_file_is_reloaded_live(tmp_path: Path) -> None:
    a, b = _server(), _server()
    ua, ub = (f"http://127.0.0.1:{s.server_address[1]}/metrics" for s in (a, b))
    la, lb = (f"127.0.0.1:{s.server_address[1]}" for s in (a, b))
    f = tmp_path / "targets.txt"
    _write(f, f"# one replica to start with\n{ua}\n")
    p = build_attach_pipeline([], Aggregator(30.0), interval=0.2, targets_file=str(f), targets_poll_s=0.1)
    p.start()

    def labels() -> list[str]:
        return [r["label"] for r in server_table(p)]

    def linked() -> dict[str, str]:
        return {r["label"]: r["link"] for r in server_table(p)}

    try:
        assert _wait(lambda: linked() == {la: "connected"})
        _write(f, f"{ua}\n{ub}  # a second replica\n")  # added: scraped from now on, with a total row
        assert _wait(lambda: linked().get(lb) == "connected")
        assert labels() == [la, lb, "total"]
        total = server_table(p)[-1]
        assert _wait(lambda: server_table(p)[-1]["gen_tokens"] == 2 * 194.0), total
        _write(f, f"{ub}\n")  # removed: no longer scraped, gone from the table
        assert _wait(lambda: labels() == [lb])
        removed = [c for c in p.collectors if getattr(c, "label", "") == la]
        assert not removed
        _write(f, f"{ub}\nthis is not a url\n")  # a bad edit keeps the targets and says why
        assert _wait(lambda: "targets" in p.status().notes)
        assert "not a target URL" in p.status().notes["targets"] and labels() == [lb]
        f.unlink()  # so does a file that disappears
        assert _wait(lambda: "cannot read" in (p.status().notes.get("targets") or ""))
        assert labels() == [lb]
        _write(f, f"{ua}\n{ub}\n")  # and a good file again clears the note
        assert _wait(lambda: labels() == [lb, la, "total"] and "targets" not in p.status().notes)
    finally:
        p.stop()
        a.shutdown()
        b.shutdown()
        a.server_close()
        b.server_close()


def _attach(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmtop", "attach", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_bad_targets_files_are_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("http://127.0.0.1:9/metrics\n# fine so far\nftp://nope\n")
    cases = [
        (["--targets", str(tmp_path / "missing.txt")], "cannot read --targets", 1),
        (["--targets", str(tmp_path)], "not a regular file", 1),
        (["--targets", str(bad), "--once"], f"{bad}:3: not a target URL", 1),
        (["--once"], "attach needs at least one URL or --targets FILE", 2),
    ]
    for args, msg, code in cases:
        r = _attach(*args)
        assert r.returncode == code, (args, r.stderr)
        err = r.stderr.strip()
        assert err.startswith("llmtop: error: ") and msg in err and len(err.splitlines()) == 1, (args, err)
        assert "Traceback" not in r.stderr and r.stdout == ""
    with pytest.raises(LlmtopError, match="cannot read"):
        read_targets(tmp_path / "missing.txt")


def test_targets_file_with_once(tmp_path: Path) -> None:
    a = _server()
    f = tmp_path / "t.txt"
    url = f"http://127.0.0.1:{a.server_address[1]}/metrics"
    f.write_text(f"{url}\n")
    try:
        # the same target on the command line and in the file: attached once
        r = _attach("--once", "--duration", "0.8", "--interval", "0.2", "--format", "json",
                    "--targets", str(f), url)
    finally:
        a.shutdown()
        a.server_close()
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["attach"]
    assert [x["kind"] for x in rows] == ["vllm"] and rows[0]["gen_tokens"] == 194.0
