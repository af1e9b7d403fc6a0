"""`llmtop run -- COMMAND`: profile the user's own inference, headless (`--once`) or in the TUI.

COMMAND runs with the agent armed (llmtop/agent/bootstrap.py via llmtop/attach/run.py). `--once` waits for
it to exit and reports the recording its instrumented process wrote (the same report keys as `llmtop
--once`); the TUI attaches to each instrumented process as it announces itself, while COMMAND's output
goes to a log file named in the title. Either way llmtop exits with COMMAND's exit status.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llmtop.attach.run import CommandRun, RunWatcher
from llmtop.collectors.gpu import GpuCollector
from llmtop.collectors.pipeline import Pipeline
from llmtop.collectors.process import ProcessCollector
from llmtop.collectors.replay import fold_into, load_into
from llmtop.errors import LlmtopError, Terminated
from llmtop.report import render, with_notes
from llmtop.stats.aggregator import Aggregator
from llmtop.traces.merge_processes import merge_recordings

if TYPE_CHECKING:
    from llmtop.export.http import MetricsServer
    from llmtop.export.options import MetricsOptions
    from llmtop.tui.session import TuiSession

NOTHING = ("llmtop: note: nothing was instrumented: {cmd} ran no torch model with decoder layers "
           "(…DecoderLayer / …Block modules in a ModuleList) and no XRT (pyxrt) call")


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _keep(recs: list[Path], record: str) -> None:
    """--record: one process's recording is copied to RECORD; several go to RECORD.<pid> each (a
    recording holds one live source), with a note naming them."""
    try:
        if len(recs) == 1:
            shutil.copyfile(recs[0], record)
            return
        for p in recs:
            shutil.copyfile(p, f"{record}.{p.stem}")
    except OSError as e:
        raise LlmtopError(f"cannot write the recording {record}: {e.strerror or e}") from None
    _note(f"llmtop: note: {len(recs)} recordings written: {', '.join(f'{record}.{p.stem}' for p in recs)}")


def _bind_metrics(opts: MetricsOptions | None) -> MetricsServer | None:
    """--metrics-port bound before COMMAND starts, so a port in use is one line and COMMAND never runs."""
    if opts is None:
        return None
    from llmtop.export.http import MetricsServer

    return MetricsServer(opts)


def _metrics_pipeline(run: CommandRun, metrics: MetricsServer, window_s: float) -> Pipeline:
    """--once with --metrics-port: attach to COMMAND's processes as the TUI does, for the metrics only (the
    printed report still comes from the recordings)."""
    p = Pipeline(Aggregator(window_s=window_s))
    p.add(RunWatcher(run, p))
    p.add(ProcessCollector(pid=run.pid, tree=True))
    p.add(GpuCollector())
    metrics.bind(p, p.counters.latest)
    p.start()
    return p


def run_once(command: list[str], *, ops: str, agent: str | None, fmt: str, record: str | None,
             window_s: float, wide: bool = False, metrics: MetricsOptions | None = None) -> int:
    """Run COMMAND to the end (its output passes through), then print the report of what it ran.
    `metrics`: also serve llmtop's metrics while it runs (the port is bound before COMMAND starts)."""
    import json

    server = _bind_metrics(metrics)
    try:
        run = CommandRun(command, ops=ops, agent=agent)
    except BaseException:
        if server is not None:
            server.close()
        raise
    live = _metrics_pipeline(run, server, window_s) if server is not None else None
    try:
        try:
            rc = run.wait()
        except Terminated as e:  # SIGTERM/SIGHUP reached llmtop only: pass it on, then wait as below
            run.signal(e.signum)
            rc = run.stop(interrupted=True)
        except KeyboardInterrupt:  # the terminal sent SIGINT to COMMAND as well: let it finish its exit
            rc = run.stop(interrupted=True)
        recs = run.recordings()
        if not recs:
            _note(NOTHING.format(cmd=command[0]))
            return rc
        agg = Aggregator(window_s=window_s)
        if len(recs) > 1:
            _note(f"llmtop: note: {len(recs)} processes were instrumented (pids "
                  f"{', '.join(p.stem for p in recs)}): one report, a track per process")
            loaded = fold_into(merge_recordings(recs), agg)
        else:
            loaded = load_into(recs[0], agg)
        if record:
            _keep(recs, record)
        report = with_notes(agg.snapshot(mode="cumulative").report, loaded.warnings, loaded.skipped,
                            loaded.skipped_by)
        if fmt == "json":
            print(json.dumps({"command": command, "exit_code": rc, **report}, indent=2, allow_nan=False))
        else:
            print(render(report, fmt, wide=wide), end="")
        return rc
    finally:
        if live is not None:
            live.stop()
        if server is not None:
            server.close()
        run.cleanup()


def build_run_session(command: list[str], *, ops: str, agent: str | None, record: str | None,
                      window_s: float, refresh: float, metrics: MetricsOptions | None = None) -> TuiSession:
    """The TUI over COMMAND's instrumented processes (not started): a RunWatcher attaching to each, and
    the process gauges of COMMAND itself. `metrics`: serve llmtop's metrics from the same aggregator."""
    from llmtop.tui.provider import PipelineProvider
    from llmtop.tui.session import TuiSession, make_app

    server = _bind_metrics(metrics)
    log = Path(f"llmtop-run-{Path(command[0]).name}.log").resolve()
    try:
        run = CommandRun(command, ops=ops, agent=agent, log=log, new_session=True, viewer=True)
    except BaseException:
        if server is not None:
            server.close()
        raise
    p = Pipeline(Aggregator(window_s=window_s))
    if server is not None:
        server.bind(p, p.counters.latest)
    p.add(RunWatcher(run, p))
    p.add(ProcessCollector(pid=run.pid, tree=True))  # vLLM runs its model in a grandchild
    p.add(GpuCollector())  # UNAVAILABLE, with its reason, without an NVIDIA GPU
    title = f"llmtop · run {' '.join(command)[:60]} · output: {log}"
    session = TuiSession(make_app(PipelineProvider(p, kind="run"), refresh, title), p)
    status: dict[str, int] = {}

    def finish() -> None:
        status["rc"] = run.stop() if run.poll() is None else run.wait()
        recs = run.recordings()
        if not recs:
            _note(NOTHING.format(cmd=command[0]))
        elif record:
            _keep(recs, record)
            _note(f"llmtop: recorded {sum(p.stat().st_size for p in recs):,} bytes to {record}")
        _note(f"llmtop: {command[0]} exited with {status['rc']}; its output is in {log}")
        run.cleanup()

    session.cleanups.append(finish)
    if server is not None:
        session.cleanups.append(server.close)
    session.exit_code = lambda: status.get("rc", 0)
    return session


__all__ = ["build_run_session", "run_once"]
