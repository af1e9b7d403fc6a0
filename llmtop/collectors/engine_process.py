"""The live decode loop in a child process (llmtop.collectors.engine_worker), read by a collector thread.

This is what `llmtop` runs by default: the engine and its recorder live in the worker, the TUI, the
aggregator and the recording in this process. The collector's thread blocks on the worker's stdout
(no GIL held while waiting) and emits what it reads, so the rest of the pipeline cannot tell it from
the in-process `EngineCollector`: same name, same batches, same markers, same `current_prompt`,
`rounds_done` and `last_outputs`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from llmtop import codec
from llmtop.collectors.base import Collector
from llmtop.collectors.engine_worker import EngineSpec
from llmtop.errors import LlmtopError
from llmtop.events import Marker, SourceInfo

WORKER_MODULE = "llmtop.collectors.engine_worker"


@dataclass(slots=True)
class WorkerGeneration:
    """One generated sequence as the worker reports it (the fields of model.engine.Generation)."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: str = "length"


class EngineProcessCollector(Collector):
    """Starts the worker, waits for its SOURCE (`launch`), then streams its frames into the pipeline."""

    name = "engine"

    def __init__(self, spec: EngineSpec, *, on_note: Callable[[str], None] | None = None,
                 on_stage: Callable[[str], None] | None = None,
                 python: str | None = None, stop_timeout: float = 10.0) -> None:
        super().__init__()
        self.spec = spec
        self.on_note = on_note
        self.on_stage = on_stage  # start-up stages the worker reports while it builds (the loading screen)
        self.python = python or sys.executable
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.source: SourceInfo | None = None
        self.current_prompt = ""
        self.rounds_done = 0
        self.last_outputs: list[WorkerGeneration] = []
        self.notes: list[str] = []
        self.worker_cpu_s = 0.0  # the worker's drain thread (its engine thread is the workload)
        self._worker_dropped = 0  # events the worker reported lost so far (STATUS frames)
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self._end: dict[str, Any] | None = None
        self._stderr_thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values()) + self.worker_cpu_s

    def activity(self) -> str:
        return f"#{self.rounds_done + 1} {self.current_prompt}" if self.current_prompt else ""

    # -- start-up (caller's thread) --------------------------------------------------------
    def launch(self) -> SourceInfo:
        """Spawn the worker and block until its engine is built; LlmtopError (one line) if it fails."""
        if self.proc is not None:
            raise RuntimeError("engine worker already launched")
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", WORKER_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise LlmtopError(f"cannot start the engine process: {e}") from None
        self._stderr_thread = threading.Thread(target=self._read_stderr, name="llmtop-engine-stderr",
                                               daemon=True)
        self._stderr_thread.start()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(self.spec.to_json().encode("utf-8") + b"\n")
            self.proc.stdin.flush()
            while self.source is None:
                if not self._handle(self._next_frame()):
                    raise LlmtopError(self._exit_message())
        except BaseException as e:
            self.close()
            if isinstance(e, BrokenPipeError | codec.CodecError):
                raise LlmtopError(self._exit_message()) from None
            raise
        return self.source

    # -- collector thread -----------------------------------------------------------------
    def run(self) -> None:
        if self.proc is None or self.source is None:
            raise LlmtopError("engine worker not launched")
        t0 = time.thread_time()
        try:
            while self._handle(self._next_frame()):
                self.flush_pending()
                self.account_cpu(t0)
        except codec.CodecError as e:
            self.fail(f"engine process stream: {e}")
            return
        finally:
            self.account_cpu(t0)
        rc = self._wait(self.stop_timeout)
        if self._end is not None and self._end.get("error"):
            self.fail(str(self._end["error"]))
        elif self._end is None and not self.stopping:
            self.fail(self._exit_message(rc))

    def _next_frame(self) -> tuple[int, bytes] | None:
        assert self.proc is not None and self.proc.stdout is not None
        return codec.read_stream_frame(self.proc.stdout)

    def _handle(self, frame: tuple[int, bytes] | None) -> bool:
        """Apply one frame; False at the end of the stream (END or EOF)."""
        if frame is None:
            return False
        ftype, payload = frame
        if ftype == codec.BATCH:
            self.emit(codec.decode_batch(payload))
        elif ftype == codec.MARKER:
            m = codec.decode_json(payload)
            self.current_prompt = str(m.get("prompt", ""))
            self.rounds_done = int(m.get("round", self.rounds_done))
            self.emit(Marker(int(m.get("t_ns", time.perf_counter_ns())), str(m.get("text", ""))))
        elif ftype == codec.OUTPUT:
            m = codec.decode_json(payload)
            self.last_outputs = [
                WorkerGeneration(str(g.get("text", "")), [int(t) for t in g.get("token_ids", [])],
                                 int(g.get("prompt_tokens", 0)), str(g.get("finish_reason", "")))
                for g in m.get("generations", []) if isinstance(g, dict)
            ]
            self.rounds_done = int(m.get("round", self.rounds_done)) + 1
        elif ftype == codec.STATUS:
            st = codec.decode_json(payload)
            self.worker_cpu_s = float(st.get("cpu_s", self.worker_cpu_s))
            lost = int(st.get("dropped", 0))
            if lost > self._worker_dropped:  # the worker's recorder drops join this collector's count
                self.dropped_events += lost - self._worker_dropped
                self._worker_dropped = lost
        elif ftype == codec.SOURCE:
            self.source = SourceInfo.from_dict(codec.decode_json(payload))
        elif ftype == codec.NOTE:
            note = codec.decode_json(payload)
            text = str(note.get("text", ""))
            if note.get("stage"):  # a start-up stage, not a note for the user to keep
                if self.on_stage is not None:
                    self.on_stage(text)
                return True
            self.notes.append(text)
            if self.on_note is not None:
                self.on_note(text)
        elif ftype == codec.END:
            self._end = codec.decode_json(payload)  # before SOURCE: the build failed, launch() says why
            return False
        return True

    # -- stopping --------------------------------------------------------------------------
    def stop(self) -> None:
        """Closing the worker's stdin asks it to finish the current step, drain and exit."""
        super().stop()
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()

    def close(self) -> None:
        """Make sure the worker is gone (terminate, then kill) and its pipes are closed."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        if self._wait(self.stop_timeout if self._end is not None else 2.0) is None:
            self.proc.terminate()
            if self._wait(2.0) is None:
                self.proc.kill()
                self._wait(5.0)
        for f in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                if f is not None:
                    f.close()

    def _wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _read_stderr(self) -> None:
        assert self.proc is not None
        f: IO[bytes] | None = self.proc.stderr
        if f is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for raw in f:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self.stderr_tail.append(line)

    def _exit_message(self, rc: int | None = None) -> str:
        """One line on why the worker ended: its END error, else its exit status and last stderr line."""
        if self._end is not None and self._end.get("error"):
            return str(self._end["error"])
        if rc is None and self.proc is not None:
            rc = self._wait(5.0)
        if self._stderr_thread is not None:
            self._stderr_thread.join(1.0)
        if rc is not None and rc < 0:
            how = f"was killed by signal {-rc}"
            with contextlib.suppress(ValueError):
                how = f"was killed by {signal.Signals(-rc).name}"
        else:
            how = f"exited with code {rc}" if rc is not None else "stopped answering"
        last = self.stderr_tail[-1] if self.stderr_tail else ""
        return f"engine process {how}" + (f": {last}" if last else "")
