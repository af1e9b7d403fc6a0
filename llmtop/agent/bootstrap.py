"""`llmtop run` inside the user's process: arm the agent in any Python process, with no code change.

`llmtop run -- COMMAND` puts a directory holding a `sitecustomize.py` first on PYTHONPATH and describes
the run in $LLMTOP_RUN (JSON: the rendezvous directory, the op granularity, the agent address). Python
imports sitecustomize at start-up in every interpreter COMMAND starts (`python script.py`, `python -m`,
console scripts such as `vllm serve`, and their child processes), and it calls `arm()` here. A process
that imports vLLM's model runner (its worker) gets the runner patched too (agent/vllm_hooks.py).

`arm()` costs nothing until torch is imported: a post-import hook waits for `torch`, then a one-shot
global forward hook instruments the first model with decoder layers that runs. Only then does the
process start an agent (loopback, a free port unless --agent named one), record every batch to
`<dir>/<pid>.llmtop` (what `llmtop run --once` reports, and what survives a SIGKILL of the viewer) and
announce itself in `<dir>/<pid>.addr`, which the TUI watches to attach. At exit the open step is closed
and flushed, and the process waits briefly (LINGER_S) for the TUI to connect, when one is expected, and
to take what is still queued.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ENV_RUN = "LLMTOP_RUN"
RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"  # vLLM's GPUModelRunner (CPUModelRunner derives from it)
LINGER_S = 3.0  # at exit, how long to wait for a connected viewer to take the last batches

_armed = False
_state: _RunState | None = None


def arm() -> None:
    """Called by the run's sitecustomize; does nothing without $LLMTOP_RUN (or when already armed)."""
    global _armed
    raw = os.environ.get(ENV_RUN)
    if _armed or not raw:
        return
    try:
        spec = json.loads(raw)
        run_dir = Path(spec["dir"])
    except (ValueError, KeyError, TypeError):
        return  # not ours to complain in someone else's process
    _armed = True
    global _state
    state = _state = _RunState(run_dir, str(spec.get("ops", "all")), str(spec.get("agent") or "127.0.0.1:0"),
                               bool(spec.get("viewer")))
    if "torch" in sys.modules:
        state.on_torch()
    else:
        sys.meta_path.insert(0, _PostImport("torch", state.on_torch))
    # AMD's XRT binding (an NPU): every XRT invocation timed, steps and layers inferred (agent/xrt_hooks.py)
    if "pyxrt" in sys.modules:
        state.on_pyxrt()
    else:
        sys.meta_path.insert(0, _PostImport("pyxrt", state.on_pyxrt))
    # vLLM's model runner (imported only in its worker process): steps and batches from its scheduler
    if RUNNER_MODULE in sys.modules:
        _patch_vllm()
    else:
        sys.meta_path.insert(0, _PostImport(RUNNER_MODULE, _patch_vllm))


def run_agent() -> Any:
    """Under `llmtop run`: this process's agent (started now if it was not yet); None when not armed. The
    caller uses the manual API (`llmtop.agent.start()` in the script): its recording is announced when the
    first step closes, if no model or XRT call announced it before."""
    if _state is None:
        return None
    agent = _state.start_agent()
    if _state.announce not in agent.before_first_step and not _state.announced:
        agent.before_first_step.append(_state.announce)
    return agent


def _patch_vllm() -> None:
    from llmtop.agent.vllm_hooks import patch_runner

    patch_runner(sys.modules[RUNNER_MODULE])


class _PostImport(importlib.abc.MetaPathFinder):
    """Runs `callback` once right after module `name` has finished executing (a post-import hook)."""

    def __init__(self, name: str, callback: Any) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        # Not one-shot here: `importlib.util.find_spec("torch")` (transformers' is_torch_available) asks
        # without importing, and the real import asks again. The hook leaves once the module has run.
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_hook(module: Any) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
                with contextlib.suppress(Exception):  # instrumentation must never break the user's import
                    self.callback()

        loader.exec_module = exec_then_hook  # type: ignore[method-assign]
        return spec


class _RunState:
    def __init__(self, run_dir: Path, ops: str, addr: str, viewer: bool) -> None:
        self.run_dir = run_dir
        self.ops = ops
        self.addr = addr
        self.viewer = viewer  # a TUI will attach: at exit, wait for it (a short script may beat it)
        self.agent: Any = None
        self.inst: Any = None
        self.lock = threading.Lock()
        self.announced = False
        self.xrt: Any = None

    def on_pyxrt(self) -> None:
        from llmtop.agent.xrt_hooks import instrument_pyxrt, set_provider

        set_provider(self.xrt_tracker)
        instrument_pyxrt(sys.modules["pyxrt"])

    def xrt_tracker(self) -> Any:
        """The tracker of the process's agent, which starts on the first XRT call; the recording is
        announced when the first XRT events are ready (the source then knows the layers)."""
        tr = self.xrt
        if tr is None:  # every wrapped call asks: only the first one (a set-up call, usually) starts anything
            tr = self.start_agent().xrt_tracker()
            if tr is not None:
                tr.before_first_emit.append(self.announce)
                self.xrt = tr
                # the recording is opened later, from inside the decode loop: import its writer now (~30 ms)
                import llmtop.traces.recording  # noqa: F401
        return tr

    def on_torch(self) -> None:
        from llmtop.agent.torch_hooks import install_global_finder

        install_global_finder(_LazyAgent(self), ops=self.ops)

    def start_agent(self) -> Any:
        """The process's agent, started when the first model is found (only processes that run a model
        listen on a port and write a recording)."""
        with self.lock:
            if self.agent is not None:
                return self.agent
            import llmtop.agent as agent_mod
            from llmtop.agent.core import Agent

            try:
                agent = Agent(self.addr).start()
            except Exception:  # the named port is taken (a second instrumented process): any free port
                agent = Agent("127.0.0.1:0").start()
            agent_mod._set_current(agent)
            self.agent = agent
            atexit.register(self.at_exit)
            return agent

    def announce(self) -> None:
        """The recording and the address file, once the agent has its first model's source."""
        if self.announced:  # a torch model and pyxrt in one process: one recording
            return
        self.announced = True
        agent = self.agent
        pid = os.getpid()
        agent.record_to(str(self.run_dir / f"{pid}.llmtop"))
        info = {"addr": agent.address, "pid": pid, "argv": sys.argv[:8], "t": time.time()}
        tmp = self.run_dir / f".{pid}.addr.tmp"
        tmp.write_text(json.dumps(info))
        tmp.replace(self.run_dir / f"{pid}.addr")  # atomic: the watcher never reads half a file

    def at_exit(self) -> None:
        agent = self.agent
        agent.close_steps()
        agent.flush()
        deadline = time.monotonic() + LINGER_S
        while self.viewer and not agent.viewers and time.monotonic() < deadline:
            time.sleep(0.02)  # the backlog replays everything to a viewer that connects now
        while agent.viewers and not agent.drained() and time.monotonic() < deadline:
            time.sleep(0.02)
        agent.close()


class _LazyAgent:
    """What the global finder instruments with: starts the real agent on first use."""

    def __init__(self, state: _RunState) -> None:
        self._state = state

    def instrument(self, model: Any, ops: str = "all") -> Any:
        agent = self._state.start_agent()
        inst = agent.instrument(model, ops=ops)
        self._state.announce()
        return inst

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state.start_agent(), name)


SITECUSTOMIZE = '''"""Written by `llmtop run`: arms the llmtop agent in every Python process of the run."""
import importlib.machinery as _m
import os as _os
import sys as _sys

try:
    from llmtop.agent.bootstrap import arm

    arm()
except Exception:  # never break the user's interpreter
    pass
# This file shadows any sitecustomize further down the path (a distribution's or the user's): run it too.
_here = _os.path.dirname(_os.path.abspath(__file__))
_rest = [p for p in _sys.path if _os.path.abspath(p or ".") != _here]
_spec = _m.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    try:
        _spec.loader.exec_module(_sys.modules[__name__])
    except Exception:
        pass
'''

__all__ = ["ENV_RUN", "SITECUSTOMIZE", "arm"]
