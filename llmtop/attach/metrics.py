"""Prometheus text from inference servers -> canonical numbers: counters, gauges, histograms.

Each server family names the same things differently; FLAVORS maps them to canonical keys:
counters gen_tokens / prompt_tokens, gauges running / waiting / kv_cache (0..1), histograms ttft / itl /
e2e (seconds). Rates come from counter deltas between two scrapes; percentiles from histogram bucket
deltas, interpolated inside a bucket like Prometheus' histogram_quantile. Label sets (engines, ranks,
models) are summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError

MAX_METRICS_BYTES = 8 * 1024 * 1024  # larger bodies are refused unparsed

# canonical key -> candidate sample names, first present wins. A counter ending in "_sum" reads a
# histogram's sum (TGI counts tokens only in histograms).
FLAVORS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "vllm": {
        "counter": {
            "gen_tokens": ("vllm:generation_tokens_total",),
            "prompt_tokens": ("vllm:prompt_tokens_total",),
        },
        "gauge": {
            "running": ("vllm:num_requests_running",),
            "waiting": ("vllm:num_requests_waiting",),
            "kv_cache": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        },
        "histogram": {
            "ttft": ("vllm:time_to_first_token_seconds",),
            "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
            "e2e": ("vllm:e2e_request_latency_seconds",),
        },
    },
    "sglang": {
        "counter": {
            "gen_tokens": ("sglang:generation_tokens_total",),
            "prompt_tokens": ("sglang:prompt_tokens_total",),
        },
        "gauge": {
            "running": ("sglang:num_running_reqs",),
            "waiting": ("sglang:num_queue_reqs",),
            "kv_cache": ("sglang:token_usage",),
        },
        "histogram": {
            "ttft": ("sglang:time_to_first_token_seconds",),
            "itl": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
            "e2e": ("sglang:e2e_request_latency_seconds",),
        },
    },
    "tgi": {
        "counter": {
            "gen_tokens": ("tgi_request_generated_tokens_sum",),
            "prompt_tokens": ("tgi_request_input_length_sum",),
        },
        "gauge": {"running": ("tgi_batch_current_size",), "waiting": ("tgi_queue_size",)},
        "histogram": {"itl": ("tgi_request_mean_time_per_token_duration",), "e2e": ("tgi_request_duration",)},
    },
    "llamacpp": {
        "counter": {
            "gen_tokens": ("llamacpp:tokens_predicted_total",),
            "prompt_tokens": ("llamacpp:prompt_tokens_total",),
        },
        "gauge": {
            "running": ("llamacpp:requests_processing",),
            "waiting": ("llamacpp:requests_deferred",),
            "kv_cache": ("llamacpp:kv_cache_usage_ratio",),
        },
        "histogram": {},
    },
}
PREFIXES = {"vllm:": "vllm", "sglang:": "sglang", "tgi_": "tgi", "llamacpp:": "llamacpp"}
QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(slots=True)
class Histogram:
    bounds: np.ndarray  # upper bounds, ascending, last is +inf
    cum: np.ndarray  # cumulative counts per bound
    sum: float = 0.0

    @property
    def count(self) -> float:
        return float(self.cum[-1]) if len(self.cum) else 0.0

    def minus(self, prev: Histogram | None) -> Histogram:
        """Observations since `prev` (all of them after a server restart reset the counts)."""
        if (
            prev is None
            or len(prev.bounds) != len(self.bounds)
            or not np.array_equal(prev.bounds, self.bounds)
        ):
            return self
        d = self.cum - prev.cum
        if (d < 0).any():  # counter reset
            return self
        return Histogram(self.bounds, d, self.sum - prev.sum)

    def quantile(self, q: float) -> float:
        return hist_quantile(q, self.bounds, self.cum)


def hist_quantile(q: float, bounds: np.ndarray, cum: np.ndarray) -> float:
    """Prometheus histogram_quantile: linear inside the bucket holding rank q*count; NaN when empty."""
    if not len(cum) or cum[-1] <= 0:
        return math.nan
    rank = q * float(cum[-1])
    i = int(np.searchsorted(cum, rank, side="left"))
    i = min(i, len(cum) - 1)
    if math.isinf(bounds[i]):
        return float(bounds[i - 1]) if i > 0 else math.nan  # the highest finite bound, as Prometheus
    lo = float(bounds[i - 1]) if i > 0 else 0.0
    c_lo = float(cum[i - 1]) if i > 0 else 0.0
    width = float(cum[i]) - c_lo
    if width <= 0:
        return float(bounds[i])
    return lo + (float(bounds[i]) - lo) * (rank - c_lo) / width


@dataclass(slots=True)
class Scrape:
    """One parsed /metrics body (plus llama.cpp /slots, when fetched) at monotonic time `t`."""

    t: float
    flavor: str
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    hists: dict[str, Histogram] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    live_decoded: float | None = None  # llama.cpp: tokens decoded so far by requests still running


def detect_flavor(names: list[str] | set[str]) -> str | None:
    counts: dict[str, int] = {}
    for n in names:
        for pre, fl in PREFIXES.items():
            if n.startswith(pre):
                counts[fl] = counts.get(fl, 0) + 1
    return max(counts, key=lambda f: counts[f]) if counts else None


def parse_metrics(text: str | bytes, t: float = 0.0, flavor: str | None = None) -> Scrape:
    """Parse a Prometheus text body; LlmtopError when oversized, malformed, or no known server."""
    from prometheus_client.parser import text_string_to_metric_families

    if isinstance(text, bytes):
        if len(text) > MAX_METRICS_BYTES:
            raise LlmtopError(f"metrics body of {len(text)} bytes exceeds {MAX_METRICS_BYTES}")
        text = text.decode("utf-8", "replace")
    elif len(text) > MAX_METRICS_BYTES:
        raise LlmtopError(f"metrics body of {len(text)} characters exceeds {MAX_METRICS_BYTES}")
    values: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    models: set[str] = set()
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                v = float(s.value)
                if math.isnan(v):
                    continue
                if "model_name" in s.labels:
                    models.add(s.labels["model_name"])
                if s.name.endswith("_bucket") and "le" in s.labels:
                    b = buckets.setdefault(s.name[: -len("_bucket")], {})
                    le = float(s.labels["le"])
                    b[le] = b.get(le, 0.0) + v
                else:
                    values[s.name] = values.get(s.name, 0.0) + v
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise LlmtopError(f"malformed Prometheus text: {e}") from None
    fl = flavor or detect_flavor(set(values) | set(buckets))
    if fl is None:
        raise LlmtopError("no vLLM, SGLang, TGI or llama.cpp metrics in the response")
    spec = FLAVORS[fl]
    sc = Scrape(t, fl, models=sorted(models))
    for key, cands in spec["counter"].items():
        for c in cands:
            if c in values:
                sc.counters[key] = values[c]
                break
    for key, cands in spec["gauge"].items():
        for c in cands:
            if c in values:
                sc.gauges[key] = values[c]
                break
    for key, cands in spec["histogram"].items():
        for c in cands:
            if c in buckets:
                les = sorted(buckets[c])
                if not les or not math.isinf(les[-1]):
                    raise LlmtopError(f"histogram {c} has no +Inf bucket")
                sc.hists[key] = Histogram(
                    np.array(les), np.array([buckets[c][x] for x in les]), values.get(c + "_sum", 0.0)
                )
                break
    return sc


def parse_slots(obj: Any) -> float:
    """llama.cpp /slots -> tokens decoded so far by the slots still processing."""
    if not isinstance(obj, list):
        raise LlmtopError("llama.cpp /slots is not a JSON list")
    total = 0.0
    for slot in obj:
        if not isinstance(slot, dict) or not slot.get("is_processing"):
            continue
        for nt in slot.get("next_token") or ():
            if isinstance(nt, dict):
                total += float(nt.get("n_decoded", 0) or 0)
    return total


def derive(cur: Scrape, prev: Scrape | None, hist_base: Scrape | None = None) -> dict[str, float]:
    """The numbers a target row shows: rates since `prev`, percentiles since `hist_base` (default `prev`;
    None: since the server started), gauges now, lifetime totals."""
    if hist_base is None:
        hist_base = prev
    out: dict[str, float] = {}
    for k, v in cur.counters.items():
        out[f"{k}_total"] = v
    for k, v in cur.gauges.items():
        out[k] = v
    if prev is not None and cur.t > prev.t:
        dt = cur.t - prev.t
        for k in ("gen_tokens", "prompt_tokens"):
            if k in cur.counters and k in prev.counters:
                a, b = prev.counters[k], cur.counters[k]
                if k == "gen_tokens" and cur.live_decoded is not None and prev.live_decoded is not None:
                    # llama.cpp counts a request's tokens only when it ends: add the running ones
                    a, b = a + prev.live_decoded, b + cur.live_decoded
                d = b - a if b >= a else b  # a drop means the server restarted
                out[f"{k.replace('_tokens', '')}_tok_s"] = max(d, 0.0) / dt
    for k, h in cur.hists.items():
        d = h.minus(hist_base.hists.get(k) if hist_base is not None else None)
        out[f"{k}_count"] = d.count
        if d.count > 0:
            out[f"{k}_mean_s"] = d.sum / d.count
            for q in QUANTILES:
                out[f"{k}_p{round(q * 100)}_s"] = d.quantile(q)
    return out


CAPABILITIES = {
    "gen_tokens": "token rate",
    "prompt_tokens": "prompt token rate",
    "running": "running requests",
    "waiting": "waiting requests",
    "kv_cache": "KV-cache use",
    "ttft": "TTFT percentiles",
    "itl": "inter-token latency percentiles",
    "e2e": "request latency percentiles",
}
ALWAYS_MISSING = ("kernels", "layers", "attention scaling", "roofline")


def capabilities(sc: Scrape) -> tuple[list[str], list[str]]:
    """(what this server's metrics give, what they cannot) for SourceInfo.extra and the kernel panes."""
    have = [*sc.counters, *sc.gauges, *sc.hists]
    can = [CAPABILITIES[k] for k in have]
    missing = [CAPABILITIES[k] for k in CAPABILITIES if k not in have]
    return can, [*missing, *ALWAYS_MISSING]
