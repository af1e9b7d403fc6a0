"""The --metrics-* options (and their environment variables), kept free of heavy imports: the CLI parsers
and the agent's autostart read them on every start, metrics or not."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from llmtop.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TOP_N = 20  # kernels with their own label; the rest add up under kernel="other"
MAX_TOP_N = 1000
ENV_PORT = "LLMTOP_METRICS_PORT"
ENV_HOST = "LLMTOP_METRICS_HOST"
ENV_TOP = "LLMTOP_METRICS_TOP"


@dataclass(frozen=True, slots=True)
class MetricsOptions:
    """Where to serve and how many kernels get their own label."""

    port: int
    host: str = DEFAULT_HOST
    top_n: int = DEFAULT_TOP_N


def check_top(top_n: Any) -> int:
    if top_n is None or str(top_n).strip() == "":
        return DEFAULT_TOP_N
    try:
        n = int(str(top_n).strip())
    except ValueError:
        raise UsageError(f"--metrics-top must be a whole number, got {top_n!r}") from None
    if not 1 <= n <= MAX_TOP_N:
        raise UsageError(f"--metrics-top must be between 1 and {MAX_TOP_N}, got {n}")
    return n


def check_options(port: Any, host: str | None = None, top_n: Any = None) -> MetricsOptions:
    """Validated options from flags or environment values; UsageError (one line) on nonsense."""
    try:
        p = int(str(port).strip())
    except (TypeError, ValueError):
        raise UsageError(f"--metrics-port must be a port number, got {port!r}") from None
    if not 0 <= p <= 65535:
        raise UsageError(f"--metrics-port must be between 0 and 65535, got {p}")
    h = (host or DEFAULT_HOST).strip().strip("[]") or DEFAULT_HOST
    return MetricsOptions(p, h, check_top(top_n))


def options_from_env(environ: dict[str, str] | None = None) -> MetricsOptions | None:
    """$LLMTOP_METRICS_PORT (+ $LLMTOP_METRICS_HOST, $LLMTOP_METRICS_TOP), or None when the port is unset."""
    env = os.environ if environ is None else environ
    port = (env.get(ENV_PORT) or "").strip()
    if not port:
        return None
    return check_options(port, env.get(ENV_HOST), env.get(ENV_TOP))


def add_metrics_arguments(p: Any, *, what: str = "") -> None:
    """--metrics-port, --metrics-host, --metrics-top on a parser or argument group."""
    p.add_argument("--metrics-port", default=None, metavar="PORT",
                   help=f"also serve llmtop's own Prometheus metrics{what} at http://HOST:PORT/metrics "
                        "(kernel, layer, step and token counters; docs/METRICS.md)")
    p.add_argument("--metrics-host", default=DEFAULT_HOST, metavar="HOST",
                   help=f"address of --metrics-port (default {DEFAULT_HOST})")
    p.add_argument("--metrics-top", default=DEFAULT_TOP_N, metavar="N",
                   help=f"kernels with their own label in the metrics, the rest add up as kernel=\"other\" "
                        f"(default {DEFAULT_TOP_N})")


def options_from_args(args: argparse.Namespace) -> MetricsOptions | None:
    """The parsed --metrics-* flags, or None without --metrics-port (UsageError on bad values)."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    return check_options(port, getattr(args, "metrics_host", None), getattr(args, "metrics_top", None))


__all__ = ["DEFAULT_HOST", "DEFAULT_TOP_N", "ENV_HOST", "ENV_PORT", "ENV_TOP", "MetricsOptions",
           "add_metrics_arguments", "check_options", "check_top", "options_from_args", "options_from_env"]
