"""`llmtop attach --targets FILE`: the target list from a file, re-read when the file changes.

FILE holds one URL per line (what `llmtop attach` takes on its command line: llmtop://host:port,
tcp://host:port, host:port, http(s)://host:port[/metrics]); blank lines and `#` comments (whole lines,
or after whitespace at the end of one) are ignored. `read_targets` refuses a missing or unreadable
file and a line that is not such a URL with one line naming the file and the line.

`TargetsWatcher` is the collector that polls the file (a stat per second: replicas come and go at
human speed) and hands the differences to the fleet: targets added start being scraped, targets removed
stop. A file that turns bad while running keeps the targets it had, and `problem` says why (the header
shows it) until the file is good again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from llmtop.attach.link import safe_text
from llmtop.collectors.base import Collector
from llmtop.errors import LlmtopError

MAX_TARGETS_BYTES = 1 << 20  # a target list, not a data file: refuse anything larger unread


def target_url_ok(url: str) -> bool:
    """A URL `llmtop attach` can use: an agent address or an http(s) endpoint with a host."""
    u = url.strip()
    if u.startswith(("http://", "https://")):
        return bool(urlsplit(u).netloc)
    if u.startswith(("llmtop://", "tcp://")):
        u = u.split("://", 1)[1]
    elif "://" in u:
        return False
    host, sep, port = u.rpartition(":")
    return bool(sep and host and port.isdigit() and "/" not in u and " " not in u)


def parse_targets(text: str, where: str) -> list[str]:
    """The URLs of a targets file's text, in order, each once; LlmtopError naming the first bad line."""
    out: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        line = line.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line:
            continue
        if not target_url_ok(line):
            raise LlmtopError(
                f"{where}:{n}: not a target URL: “{safe_text(line)}” (use llmtop://host:port or "
                "http(s)://host:port/metrics, one per line)"
            )
        if line not in out:
            out.append(line)
    return out


def read_targets(path: str | os.PathLike[str]) -> list[str]:
    """The URLs in a targets file; LlmtopError (one line) when it is missing, unreadable or has a bad line."""
    p = Path(path)
    where = safe_text(str(path))
    try:
        st = p.stat()
        if not p.is_file():
            raise LlmtopError(f"--targets {where}: not a regular file")
        if st.st_size > MAX_TARGETS_BYTES:
            raise LlmtopError(f"--targets {where}: {st.st_size} bytes, too large for a target list")
        data = p.read_bytes()
    except OSError as e:
        raise LlmtopError(f"cannot read --targets {where}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LlmtopError(f"--targets {where}: not UTF-8 text") from None
    return parse_targets(text, where)


class Fleet(Protocol):
    """What the watcher changes: the attach pipeline's set of file targets."""

    def set_file_targets(self, urls: Sequence[str]) -> None: ...


class TargetsWatcher(Collector):
    """Re-reads the targets file when its stat changes and hands the new list to the fleet."""

    name = "targets"

    def __init__(self, path: str | os.PathLike[str], fleet: Fleet, *, poll_s: float = 1.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.fleet = fleet
        self.poll_s = poll_s
        self.problem: str | None = None  # why the last re-read was refused; None while the file is good
        self.reloads = 0  # lists handed to the fleet after the first (tests)
        self._seen = self._stat()

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def check(self) -> bool:
        """Re-read the file if it changed since the last look; True when the fleet got a new list."""
        seen = self._stat()
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            urls = read_targets(self.path)
        except LlmtopError as e:
            self.problem = f"{e}; keeping the previous targets"
            return False
        self.problem = None
        self.fleet.set_file_targets(urls)
        self.reloads += 1
        return True

    def activity(self) -> str:
        return ""

    def run(self) -> None:
        import time

        t_cpu = time.thread_time()
        while not self.wait(self.poll_s):
            self.check()
            self.account_cpu(t_cpu)


__all__ = ["MAX_TARGETS_BYTES", "TargetsWatcher", "parse_targets", "read_targets", "target_url_ok"]
