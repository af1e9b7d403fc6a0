"""`llmtop run -- COMMAND`: start the user's command with the agent armed, and find its agents.

`CommandRun` starts COMMAND with a directory holding llmtop's `sitecustomize.py` first on PYTHONPATH and
the run described in $LLMTOP_RUN (see llmtop/agent/bootstrap.py): every Python process of the command that
runs a torch model with decoder layers starts an agent, records to `<dir>/<pid>.llmtop` and announces its
address in `<dir>/<pid>.addr`. `RunWatcher` is the collector that watches that directory and attaches an
`AgentCollector` to each announced process, so a child process (vLLM's engine core) is followed too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import llmtop
from llmtop.agent.bootstrap import ENV_RUN, SITECUSTOMIZE
from llmtop.attach.agent_client import AgentCollector, NameStream
from llmtop.collectors.base import Collector
from llmtop.collectors.pipeline import Pipeline
from llmtop.errors import LlmtopError
from llmtop.events import SourceInfo
from llmtop.numfmt import printable

OPS = ("all", "layers")


class CommandRun:
    """The user's command, started with the agent armed; `dir` holds its recordings and addresses."""

    def __init__(self, command: list[str], *, ops: str = "all", agent: str | None = None,
                 log: str | Path | None = None, new_session: bool = False, viewer: bool = False) -> None:
        if not command:
            raise LlmtopError("llmtop run needs a command after --, e.g. llmtop run -- python script.py")
        if ops not in OPS:
            raise LlmtopError(f"--ops must be one of {', '.join(OPS)}, not {ops!r}")
        self.command = list(command)
        self.dir = Path(tempfile.mkdtemp(prefix="llmtop-run-"))
        (self.dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = dict(os.environ)
        # our sitecustomize first; the llmtop package importable even when COMMAND uses another interpreter
        pkg_root = str(Path(llmtop.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.dir), pkg_root, env.get("PYTHONPATH")) if p)
        env[ENV_RUN] = json.dumps({"dir": str(self.dir), "ops": ops, "agent": agent or "127.0.0.1:0",
                                   "viewer": viewer})
        self.log_path = Path(log) if log is not None else None
        self._log: IO[bytes] | None = open(self.log_path, "wb") if self.log_path else None  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.command, env=env, stdin=subprocess.DEVNULL if new_session else None,
                stdout=self._log, stderr=subprocess.STDOUT if self._log else None,
                start_new_session=new_session,
            )
        except OSError as e:
            self.cleanup()
            raise LlmtopError(f"cannot start {self.command[0]!r}: {e.strerror or e}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self) -> int:
        """COMMAND's exit status as a shell reports it (128 + N when signal N ended it)."""
        rc = self.proc.wait()
        return 128 - rc if rc < 0 else rc

    def signal(self, signum: int) -> None:
        """Send COMMAND a signal (nothing when it has exited)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def stop(self, grace_s: float = 5.0, *, interrupted: bool = False) -> int:
        """SIGINT (what ctrl-c sends), then SIGTERM, then SIGKILL, each after `grace_s`; the exit status.

        `interrupted`: the terminal's ctrl-c already reached COMMAND (same process group), so give it
        `grace_s` to finish its own exit before anything is sent.
        """
        if interrupted:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        for sig in (signal.SIGTERM, signal.SIGKILL) if interrupted else (signal.SIGINT, signal.SIGTERM,
                                                                         signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        return self.wait()

    def recordings(self) -> list[Path]:
        """One recording per instrumented process, the largest first."""
        recs = [p for p in self.dir.glob("*.llmtop") if p.stat().st_size > 0]
        return sorted(recs, key=lambda p: p.stat().st_size, reverse=True)

    def announced(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.dir.glob("*.addr")):
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(p.read_text()))
        return out

    def cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.dir, ignore_errors=True)


def last_line(path: Path, *, tail_bytes: int = 4096, width: int = 200) -> str:
    """The last non-blank line of a growing log (a progress bar's latest `\\r` update counts as a line),
    control characters escaped and cut to `width`; "" when there is none or the file cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            data = f.read(tail_bytes)
    except OSError:
        return ""
    for line in reversed(re.split(r"[\r\n]+", data.decode("utf-8", "replace"))):
        line = _ANSI.sub("", line).strip()
        if line:
            line = printable(line)
            return line if len(line) <= width else line[: width - 1] + "…"
    return ""


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # colour and cursor sequences a progress bar writes


class RunWatcher(Collector):
    """Attaches an AgentCollector to every process of the run that announces an agent; ends (after the
    agents have delivered what the processes sent) once COMMAND has exited."""

    name = "run"

    def __init__(self, run: CommandRun, pipeline: Pipeline, *, poll_s: float = 0.1) -> None:
        super().__init__()
        self.run_ = run
        self.pipeline = pipeline
        self.poll_s = poll_s
        self.stream = NameStream()
        self.agents: dict[int, AgentCollector] = {}
        self.exit_code: int | None = None

    def activity(self) -> str:
        cmd = " ".join(self.run_.command)[:80]
        if self.exit_code is not None:
            return f"{cmd} exited ({self.exit_code})"
        n = len(self.agents)
        text = f"{cmd} (pid {self.run_.pid}, " + (f"{n} instrumented)" if n else "no model hooked yet)")
        link = next((a for c in list(self.agents.values()) if (a := c.activity())), "")
        if link:  # a hooked model that has not run yet: what its agent link says
            text += f" · {link}"
        if not n and self.run_.log_path is not None:
            # Until a model is hooked, the command's own output is the best account of what it is doing
            # (imports, "Loading checkpoint shards: 50%", vLLM's start-up stages): its last line.
            last = last_line(self.run_.log_path)
            if last:
                text += f" · last output: {last}"
        return text

    def run(self) -> None:
        while not self.stopping:
            self._discover()
            if self.run_.poll() is not None:
                self.exit_code = self.run_.wait()
                self._discover()
                break
            self.wait(self.poll_s)
        # the processes linger at exit until their viewer has the last batches (bootstrap.LINGER_S)
        deadline = time.monotonic() + 5.0
        def connected() -> bool:
            return any(c.alive and c.link == "connected" for c in self.agents.values())

        while connected() and time.monotonic() < deadline:
            self.wait(0.05)
        for c in self.agents.values():
            c.stop()

    def _discover(self) -> None:
        for info in self.run_.announced():
            pid = int(info.get("pid", 0))
            if pid in self.agents or not info.get("addr"):
                continue
            c = AgentCollector(f"llmtop://{info['addr']}", stream=self.stream, label=f"pid {pid}",
                               on_source=self._on_source)
            self.agents[pid] = c
            self.pipeline.add(c)

    def _on_source(self, src: SourceInfo) -> None:
        extra = {**src.extra, "command": self.run_.command, "pid": self.run_.pid}
        self.pipeline.set_source(dataclasses.replace(src, kind="run", extra=extra))


__all__ = ["OPS", "CommandRun", "RunWatcher", "last_line"]
