"""The llmtop agent: publish a running inference process's events to `llmtop attach`.

    import llmtop.agent
    agent = llmtop.agent.start("127.0.0.1:7070", engine=engine)   # or model=hf_model, or neither
    with agent.step("decode", tokens=1, batch=1, ctx=n):            # manual API for custom loops
        with agent.layer(0): ...
        with agent.kernel("matmul:lm_head", "matmul"): ...

Zero code changes: `python -m llmtop.agent.run --addr 127.0.0.1:7070 server.py ARGS` runs the script with
an agent that instruments the first model with decoder layers. Programs that call `autostart()` (llmtop
serve does) start one when LLMTOP_AGENT=host:port is set; LLMTOP_AGENT_TOKEN sets the shared token.

NPUs: in a process that imports AMD XRT's `pyxrt`, `start()` (and `llmtop run`) also time every XRT call
(agent/xrt_hooks.py); `agent.kernel(name, op_class)` then marks CPU host ops and `agent.layer(i)` layers
anywhere, steps being inferred when `agent.step` is not used. Under `llmtop run`, `start()` with no address
returns the process's own agent (the one its report is recorded from).

Prometheus: `start(..., metrics_port=9100)`, `--metrics-port` on `python -m llmtop.agent.run`, or
LLMTOP_METRICS_PORT (+ LLMTOP_METRICS_HOST, default 127.0.0.1) for `autostart()` also serve llmtop's own
metrics (docs/METRICS.md) at http://HOST:PORT/metrics, folded from the batches the agent publishes.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmtop.agent.core import Agent

# Imported lazily: `llmtop run` arms every Python process through llmtop.agent.bootstrap, and most of them
# (shells' helpers, pip, the API server) never run a model; core pulls in numpy and the codec (~0.1 s).
_FROM_CORE = ("DEFAULT_ADDR", "Agent", "parse_addr")


def __getattr__(name: str) -> Any:
    if name in _FROM_CORE:
        from llmtop.agent import core

        return getattr(core, name)
    raise AttributeError(f"module 'llmtop.agent' has no attribute {name!r}")


ENV_ADDR = "LLMTOP_AGENT"
ENV_TOKEN = "LLMTOP_AGENT_TOKEN"

_global: Agent | None = None
_global_lock = threading.Lock()


def start(
    addr: str | None = None, token: str | None = None, engine: Any = None, model: Any = None, *,
    metrics_port: int | None = None, metrics_host: str | None = None, metrics_top: int | None = None,
    **kw: Any,
) -> Agent:
    """Start an agent listening on addr (default DEFAULT_ADDR, 127.0.0.1:7070; port 0 picks a free one;
    see `agent.address`). With `metrics_port`, also serve llmtop's metrics there (on `metrics_host`,
    default 127.0.0.1; `metrics_top` kernels by name, default 20): `agent.metrics_url`."""
    from llmtop.agent.core import DEFAULT_ADDR, Agent

    if addr is None and metrics_port is None and not kw:
        from llmtop.agent.bootstrap import run_agent

        armed = run_agent()
        if armed is not None:  # under `llmtop run`: this process's own agent, the one its report comes from
            if engine is not None:
                armed.attach_engine(engine)
            if model is not None:
                armed.instrument(model)
            return armed
    opts = None
    if metrics_port is not None:
        from llmtop.export.options import check_options

        opts = check_options(metrics_port, metrics_host, metrics_top)  # bad values fail before any bind
    agent = Agent(addr or DEFAULT_ADDR, token, engine=engine, model=model, **kw).start()
    agent.watch_xrt()  # pyxrt's calls (NPU), now or once it is imported
    if opts is not None:
        _serve_metrics(agent, opts)
    return agent


def _serve_metrics(agent: Agent, opts: Any) -> None:
    # Imported only when a metrics port is asked for: it folds with llmtop.stats, which the agent itself
    # never needs (arming a process stays cheap). The tap is added before any batch is drained.
    from llmtop.export.agent import serve_agent_metrics

    try:
        server = serve_agent_metrics(agent, opts)
    except BaseException:
        agent.close(timeout=1.0)
        raise
    agent.metrics_url = server.url


def autostart(engine: Any = None, model: Any = None) -> Agent | None:
    """Start (once per process) the agent named by $LLMTOP_AGENT, or return None when it is unset.

    Called again with an engine or model, the running agent adopts it.
    """
    global _global
    addr = os.environ.get(ENV_ADDR, "").strip()
    if not addr:
        return None
    with _global_lock:
        if _global is None:
            from llmtop.export.options import options_from_env

            m = options_from_env()  # $LLMTOP_METRICS_PORT: llmtop's metrics beside the agent
            _global = start(addr, os.environ.get(ENV_TOKEN) or None,
                            metrics_port=m.port if m else None, metrics_host=m.host if m else None,
                            metrics_top=m.top_n if m else None)
        agent = _global
    if engine is not None:
        agent.attach_engine(engine)
    if model is not None:
        agent.instrument(model)
    return agent


def current() -> Agent | None:
    """The process-wide agent started by autostart / llmtop.agent.run, if any."""
    return _global


def _set_current(agent: Agent) -> None:
    global _global
    with _global_lock:
        _global = agent


__all__ = ["DEFAULT_ADDR", "ENV_ADDR", "ENV_TOKEN", "Agent", "autostart", "current", "parse_addr", "start"]
