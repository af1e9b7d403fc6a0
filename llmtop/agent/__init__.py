"""The llmtop agent: publish a running inference process's events to `llmtop attach`.

    import llmtop.agent
    agent = llmtop.agent.start("127.0.0.1:7070", engine=engine)   # or model=hf_model, or neither
    with agent.step("decode", tokens=1, batch=1, ctx=n):            # manual API for custom loops
        with agent.layer(0): ...
        with agent.kernel("matmul:lm_head", "matmul"): ...

Zero code changes: `python -m llmtop.agent.run --addr 127.0.0.1:7070 server.py ARGS` runs the script with
an agent that instruments the first model with decoder layers. Programs that call `autostart()` (llmtop
serve does) start one when LLMTOP_AGENT=host:port is set; LLMTOP_AGENT_TOKEN sets the shared token.
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
    addr: str | None = None, token: str | None = None, engine: Any = None, model: Any = None, **kw: Any
) -> Agent:
    """Start an agent listening on addr (default DEFAULT_ADDR, 127.0.0.1:7070; port 0 picks a free one;
    see `agent.address`)."""
    from llmtop.agent.core import DEFAULT_ADDR, Agent

    return Agent(addr or DEFAULT_ADDR, token, engine=engine, model=model, **kw).start()


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
            _global = start(addr, os.environ.get(ENV_TOKEN) or None)
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
