"""`python -m llmtop.agent.run [--addr HOST:PORT] [--token T] [--metrics-port P] script.py [args...]`.

No code changes: starts the agent, arms a one-shot global forward hook that instruments the first torch
model with decoder layers, then runs the script as __main__ (like `python script.py`). `--metrics-port`
(or $LLMTOP_METRICS_PORT) also serves llmtop's own Prometheus metrics from this process.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time

from llmtop.errors import LlmtopError


def main(argv: list[str] | None = None) -> int:
    import llmtop.agent as agent_mod

    p = argparse.ArgumentParser(prog="python -m llmtop.agent.run", description=__doc__.splitlines()[0])
    p.add_argument("--addr", default=os.environ.get(agent_mod.ENV_ADDR) or agent_mod.DEFAULT_ADDR)
    p.add_argument("--token", default=os.environ.get(agent_mod.ENV_TOKEN))
    p.add_argument("--no-torch", action="store_true", help="do not instrument torch models")
    from llmtop.export.options import ENV_HOST, ENV_PORT, ENV_TOP, add_metrics_arguments, options_from_args

    add_metrics_arguments(p, what=" from this process")
    p.set_defaults(metrics_port=os.environ.get(ENV_PORT) or None,
                   metrics_host=os.environ.get(ENV_HOST) or None, metrics_top=os.environ.get(ENV_TOP) or None)
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    try:
        m = options_from_args(a)
        agent = agent_mod.start(a.addr, a.token, metrics_port=m.port if m else None,
                                metrics_host=m.host if m else None, metrics_top=m.top_n if m else None)
    except LlmtopError as e:
        print(f"llmtop: error: {e}", file=sys.stderr)
        return e.exit_code
    agent_mod._set_current(agent)
    os.environ[agent_mod.ENV_ADDR] = agent.address  # autostart() in the script reuses this agent
    if not a.no_torch:
        try:
            from llmtop.agent.torch_hooks import install_global_finder

            install_global_finder(agent)
        except ImportError:
            pass
    print(f"llmtop agent listening on {agent.address}", file=sys.stderr)
    if agent.metrics_url:
        print(f"llmtop metrics on {agent.metrics_url}", file=sys.stderr)
    sys.argv = [a.script, *a.args]
    try:
        runpy.run_path(a.script, run_name="__main__")
    finally:
        # a step stays open until the next forward: close it, publish, let connected viewers take it
        agent.close_steps()
        agent.flush()
        deadline = time.monotonic() + 3.0
        while agent.viewers and not agent.drained() and time.monotonic() < deadline:
            time.sleep(0.02)
        agent.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
