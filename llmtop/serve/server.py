"""`llmtop serve`'s process: arguments, the checks made before the model loads, uvicorn, the agent, signals.

Order of start-up, so that every mistake costs a second rather than a model load: arguments are checked,
then the HTTP port and the agent's address (a non-loopback agent needs a token) and port are bound, then
the model loads. `--host` beyond loopback without `--api-key` prints a one-line warning.

Shutdown: SIGTERM, SIGINT or SIGHUP stops accepting connections and lets the requests in flight run for up
to `--drain-timeout` seconds (default 5); then the rest are aborted (finish_reason "abort"; the engine stops
within one step) and the process exits with status 0. A second signal aborts at once. Should the engine not
stop within HARD_EXIT_S of the deadline, the process exits with status 1 without further cleanup.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from llmtop.errors import LlmtopError, UsageError

DRAIN_TIMEOUT_S = 5.0
HARD_EXIT_S = 3.0  # after the drain deadline: the engine had this long to stop
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
ENV_API_KEY = "LLMTOP_API_KEY"
_AGENT_OFF = ("off", "none", "no", "0")


def _say(msg: str) -> None:
    """One line on stderr, safe from a signal handler (no buffered-stream lock)."""
    with contextlib.suppress(OSError):
        os.write(2, f"llmtop serve: {msg}\n".encode("utf-8", "replace"))


def is_loopback_host(host: str) -> bool:
    """True when every address `host` names is a loopback address (127.0.0.0/8, ::1, localhost)."""
    import ipaddress
    import socket

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise LlmtopError(f"cannot resolve --host {host}: {e}") from None
    fam, _, _, _, addr = infos[0]
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise LlmtopError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _configure_logging(level: str) -> None:
    import logging

    lg = logging.getLogger("llmtop.serve")
    if not any(getattr(h, "_llmtop_serve", False) for h in lg.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("llmtop serve: %(message)s"))
        h._llmtop_serve = True  # type: ignore[attr-defined]
        lg.addHandler(h)
    lg.setLevel(logging.DEBUG if level == "trace" else getattr(logging, level.upper()))
    lg.propagate = False


class _Shutdown:
    """What a signal does: drain, then abort at the deadline, then (should the engine hang) exit hard."""

    def __init__(self, sched: Any, drain_s: float) -> None:
        self.sched = sched
        self.drain_s = drain_s
        self.signalled_at: float | None = None
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()
        self._deadline_passed = False

    def _timer(self, delay: float, fn: Callable[[], None]) -> None:
        t = threading.Timer(delay, fn)
        t.daemon = True
        self._timers.append(t)
        t.start()

    def on_signal(self, sig: int, first: bool) -> None:  # in the signal handler: no locks, no print
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if first:
            self.signalled_at = time.monotonic()
            n = self.sched.in_flight
            if n:
                _say(f"{name}: stopping; {n} request(s) in flight get up to {self.drain_s:g} s to finish")
            else:
                _say(f"{name}: stopping")
            self._timer(self.drain_s, self.deadline)
        else:
            _say(f"{name} again: aborting the requests in flight now")
            self._timer(0.0, self.deadline)

    def deadline(self) -> None:
        with self._lock:
            if self._deadline_passed:
                return
            self._deadline_passed = True
        n = self.sched.abort_all("shutdown: drain timeout")
        if n:
            _say(f"drain timeout: aborted {n} request(s)")
        self._timer(HARD_EXIT_S, self._hard_exit)

    def _hard_exit(self) -> None:
        _say(f"the engine did not stop within {HARD_EXIT_S:g} s of the drain deadline; exiting now")
        os._exit(1)

    def cancel(self) -> None:
        for t in self._timers:
            t.cancel()


def _make_server(config: Any, shutdown: _Shutdown) -> Any:
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn's server with our signal handling: SIGHUP too, a drain deadline, and no re-raise of the
        signal after a clean shutdown (uvicorn re-raises it; the drain is our handling of it)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            sigs = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
            previous = {s: signal.signal(s, self.handle_exit) for s in sigs}
            try:
                yield
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)

        def handle_exit(self, sig: int, frame: Any) -> None:
            first = not self.should_exit
            self.should_exit = True
            if not first:
                self.force_exit = True
            shutdown.on_signal(sig, first)

    return _Server(config)


def run_server(
    backend: str = "cpu",
    model: str = "default",
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_batch: int = 8,
    agent_addr: str | None = None,
    agent_token: str | None = None,
    threads: int | None = None,
    max_context: int | None = None,
    model_name: str | None = None,
    log_level: str = "warning",
    api_key: str | None = None,
    drain_timeout: float = DRAIN_TIMEOUT_S,
    dtype: str = "auto",
    metrics_top: int | None = None,
) -> int:
    """Check, bind, load the model, serve HTTP until a signal; 0 after a signal's shutdown, 1 when the
    server did not start. Raises LlmtopError (UsageError for bad arguments) before the model loads."""
    import llmtop.agent as agent_mod
    from llmtop.agent.core import is_loopback, parse_addr

    log_level = (log_level or "warning").lower()
    if log_level not in LOG_LEVELS:
        raise UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    if not 0 <= port <= 65535:
        raise UsageError(f"bad port {port}")
    if max_batch < 1:
        raise UsageError(f"--max-batch must be >= 1, got {max_batch}")
    if max_context is not None and max_context < 2:
        raise UsageError(f"--max-context must be >= 2, got {max_context}")
    if not (math.isfinite(drain_timeout) and 0 <= drain_timeout <= 3600):
        raise UsageError(f"--drain-timeout must be between 0 and 3600 seconds, got {drain_timeout}")
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key is empty")
    from llmtop.kernels.factory import check_backend

    check_backend(backend, dtype)  # a bad --backend/--dtype is one line, before the model loads
    from llmtop.export.options import check_top

    metrics_top = check_top(metrics_top)
    # The agent is on by default (127.0.0.1:7070, or $LLMTOP_AGENT); "off" disables it.
    agent_addr = agent_addr or os.environ.get(agent_mod.ENV_ADDR) or agent_mod.DEFAULT_ADDR
    token = agent_token or os.environ.get(agent_mod.ENV_TOKEN) or None
    agent_on = agent_addr.strip().lower() not in _AGENT_OFF
    if agent_on:
        try:
            a_host, a_port = parse_addr(agent_addr)
        except LlmtopError as e:
            raise UsageError(f"--agent: {e}") from None
        if not is_loopback(a_host) and not token:
            raise UsageError(
                f"the agent address {agent_addr} (--agent or ${agent_mod.ENV_ADDR}) is not loopback: "
                f"it needs a token (--agent-token or ${agent_mod.ENV_TOKEN})"
            )
        if a_port == port and a_port != 0:
            raise UsageError(f"--agent and --port both name port {port}")
    _check_port(host, port)  # fail before the (slow) model load, with one line instead of uvicorn's log
    _configure_logging(log_level)
    if not api_key and not is_loopback_host(host):
        _say(f"warning: --host {host} is not loopback and the HTTP API has no authentication: anyone who "
             "can reach the port can run requests (add --api-key KEY, or bind 127.0.0.1)")
    # Bind the agent now too (a port in use fails here, before the model loads); it adopts the engine later.
    agent = agent_mod.start(agent_addr, token) if agent_on else None
    try:
        return _serve(backend, model, host, port, agent, max_batch=max_batch, threads=threads,
                      max_context=max_context, model_name=model_name, log_level=log_level, api_key=api_key,
                      drain_timeout=drain_timeout, dtype=dtype, metrics_top=metrics_top)
    finally:
        if agent is not None:
            agent.close(timeout=1.0)


def _serve(backend: str, model: str, host: str, port: int, agent: Any, *, max_batch: int,
           threads: int | None, max_context: int | None, model_name: str | None, log_level: str,
           api_key: str | None, drain_timeout: float, dtype: str = "auto", metrics_top: int = 20) -> int:
    import logging

    import uvicorn

    from llmtop.export.agent import AgentFeed, LocalGauges
    from llmtop.export.metrics import LlmtopCollector
    from llmtop.kernels.factory import make_ops
    from llmtop.model.engine import Engine
    from llmtop.model.loader import load_model
    from llmtop.serve.app import build_app
    from llmtop.serve.metrics import ServeMetrics
    from llmtop.serve.scheduler import Scheduler

    log = logging.getLogger("llmtop.serve")
    t0 = time.monotonic()
    if sys.stderr.isatty():  # a person waiting sees progress; a script's stderr keeps to one error line
        _say(f"starting: loading {model} on {backend} (--log-level info shows each stage)")
    loaded = load_model(model)
    t1 = time.monotonic()
    log.info("model %s read in %.2f s (%s layers)", loaded.source, t1 - t0, loaded.config.n_layers)
    # per-kernel timing only where something reads it (the agent); its recorder's backlog is bounded anyway
    ops = make_ops(backend, dtype, threads=threads, timing=agent is not None)
    t2 = time.monotonic()
    log.info("backend %s ready in %.2f s: %s, %s", backend, t2 - t1, ops.device_name, ops.dtype_name)
    engine = Engine(loaded, ops, max_batch=max_batch, max_context=max_context)
    t3 = time.monotonic()
    log.info("engine ready in %.2f s (KV cache for %d x %d tokens)", t3 - t2, max_batch, engine.max_context)
    cfg_name = getattr(loaded.config, "name", "") or ""
    name = model_name or cfg_name or str(model)
    # without --served-model-name, requests may also name the model as it was given or as it calls itself
    aliases = () if model_name else tuple(a for a in (str(model), cfg_name) if a)
    # llmtop's own metrics (llmtop_*) in /metrics: folded from the agent's stream, tapped before the engine's
    # first batch; without the agent nothing is timed, and only the process gauges are there
    feed = AgentFeed(agent) if agent is not None else None
    if agent is not None:
        agent.attach_engine(engine)
        src = agent.source
        src.extra["serve"] = f"http://{host}:{port}"
        agent.set_source(src)
    metrics = ServeMetrics(name)
    gauges = LocalGauges()
    metrics.add_collector(LlmtopCollector(feed, gauges.latest, top_n=metrics_top))
    sched = Scheduler(engine, metrics, max_batch=max_batch, agent=agent)
    sched.start()
    shutdown = _Shutdown(sched, drain_timeout)
    try:
        app = build_app(engine, sched, metrics, name, api_key=api_key, aliases=aliases)
        config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off",
            timeout_graceful_shutdown=math.ceil(drain_timeout + 1.0),  # the abort ends them before
        )
        server = _make_server(config, shutdown)
        agent_note = f", agent on llmtop://{agent.address}" if agent is not None else ""
        key_note = ", API key required" if api_key else ""
        print(
            f"llmtop serve: {name} on http://{host}:{port} ({backend}, max batch {max_batch}){agent_note}"
            f"{key_note}",
            file=sys.stderr,
            flush=True,
        )
        log.info("ready %.2f s after start", time.monotonic() - t0)
        server.run()
        return 0 if server.started else 1
    finally:
        sched.stop(timeout=1.0)
        gauges.close()
        if shutdown.signalled_at is not None:
            _say(f"stopped {time.monotonic() - shutdown.signalled_at:.1f} s after the signal")
        shutdown.cancel()


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="cpu", help="cpu, cuda or wgpu (default cpu)")
    p.add_argument("--model", default="default", help="model spec (default: the shipped SmolLM2)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; others warn unless --api-key is set)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-context", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="auto",
                   help="compute dtype: auto (bfloat16 on CUDA, else float32), float32, bfloat16, float16")
    p.add_argument("--served-model-name", default=None,
                   help="the model name requests must use (default: the model's own name; others get 404)")
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"require `Authorization: Bearer KEY` on /v1 routes, else 401 (default: ${ENV_API_KEY})",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=DRAIN_TIMEOUT_S,
        metavar="S",
        help="on SIGTERM/SIGINT, let running requests finish for up to S seconds, then abort them and exit 0 "
        f"(default {DRAIN_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--agent",
        default=None,
        metavar="HOST:PORT",
        help="llmtop agent address (default: $LLMTOP_AGENT or 127.0.0.1:7070; off to disable; "
        "a non-loopback host needs --agent-token)",
    )
    p.add_argument("--agent-token", default=None, help="shared token (default: $LLMTOP_AGENT_TOKEN)")
    p.add_argument("--metrics-top", default=None, metavar="N",
                   help="kernels with their own label in /metrics' llmtop_kernel_* series, the rest "
                        "add up as kernel=\"other\" (default 20)")
    p.add_argument("--log-level", default="warning", type=str.lower, choices=LOG_LEVELS,
                   help="uvicorn's and llmtop serve's log level (info also logs aborted requests)")


def serve_main(args: argparse.Namespace) -> int:
    """Entry point for `llmtop serve` (args from add_serve_arguments). Raises LlmtopError on bad input."""
    token = args.agent_token or os.environ.get("LLMTOP_AGENT_TOKEN") or None
    api_key = args.api_key if args.api_key is not None else (os.environ.get(ENV_API_KEY) or None)
    return run_server(
        args.backend,
        args.model,
        args.host,
        args.port,
        max_batch=args.max_batch,
        agent_addr=args.agent,
        agent_token=token,
        threads=args.threads,
        max_context=args.max_context,
        model_name=args.served_model_name,
        log_level=args.log_level,
        api_key=api_key,
        drain_timeout=args.drain_timeout,
        dtype=args.dtype,
        metrics_top=getattr(args, "metrics_top", None),
    )
