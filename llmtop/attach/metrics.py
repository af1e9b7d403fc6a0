"""Prometheus text from inference servers -> canonical numbers: counters, gauges, histograms.

Each server family names the same things differently; FLAVORS maps them to canonical keys:
counters gen_tokens / prompt_tokens / requests / preemptions / prefix_queries / prefix_hits, counters of
one label value (aborted, failed: `request_success_total{finished_reason="abort"|"error"}`), gauges
running / waiting / kv_cache (0..1), histograms ttft / itl / e2e (seconds). Rates come from counter
deltas between two scrapes; window counts (preemptions, aborted, failed) and percentiles from the
deltas since the start of the window, percentiles interpolated inside a bucket like Prometheus'
histogram_quantile. Label sets (engines, ranks, models) are summed.

Parsing is `prometheus_client.parser.text_string_to_metric_families`, fed only the lines of the metric
names FLAVORS reads: a vLLM body is ~630 lines of which ~85 matter, and the parser costs ~12 µs a line
(8 ms for the whole vLLM 0.32 capture, 1.7 ms for its kept lines), which decides whether scraping 16
servers at 1 Hz fits in 5 % of a core. `LineCache` goes further for a target scraped again and again:
a series (name and labels) parsed at an earlier scrape is not parsed again, only its new value is read.
"""

from __future__ import annotations

import math
import re
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
            "requests": ("vllm:request_success_total",),  # finished requests, every finished_reason
            "preemptions": ("vllm:num_preemptions_total",),
            "prefix_queries": ("vllm:prefix_cache_queries_total",),  # prompt tokens looked up
            "prefix_hits": ("vllm:prefix_cache_hits_total",),  # ... and found in the prefix cache
        },
        "labelled": {
            # a client that went away (vLLM stops the request) vs the engine failing it
            "aborted": ("vllm:request_success_total", "finished_reason", "abort"),
            "failed": ("vllm:request_success_total", "finished_reason", "error"),
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
        # names as sglang/srt/metrics/collector.py registers them (TokenizerMetricsCollector and the
        # scheduler's collector); a retraction is SGLang's preemption (a request pushed back to the queue)
        "counter": {
            "gen_tokens": ("sglang:generation_tokens_total",),
            "prompt_tokens": ("sglang:prompt_tokens_total",),
            "requests": ("sglang:num_requests_total",),
            "preemptions": ("sglang:num_retracted_requests_total",),
            "aborted": ("sglang:num_aborted_requests_total",),
            "prefix_queries": ("sglang:prompt_tokens_total",),  # prompt tokens looked up ...
            "prefix_hits": ("sglang:cached_tokens_total",),  # ... and found in the radix cache
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
            "requests": ("tgi_request_count",),
            "failed": ("tgi_request_failure",),
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
RATES = ("gen_tokens", "prompt_tokens", "requests")  # counters shown per second
WINDOW_COUNTS = ("preemptions", "aborted", "failed")  # counters shown as "how many in the window"


def _metric_names() -> set[str]:
    """Every sample name FLAVORS reads, histograms as their base name."""
    out: set[str] = set()
    for spec in FLAVORS.values():
        for kind, keys in spec.items():
            for cands in keys.values():
                out.update(cands[:1] if kind == "labelled" else cands)
    return out


_LABELLED = frozenset(m for spec in FLAVORS.values() for m, _, _ in spec.get("labelled", {}).values())
_LE: dict[str, float] = {}  # `le` label text -> bound: the same few dozen strings in every scrape


def _base(name: str) -> str:
    """A sample name without the suffix the exposition adds (counters' _total, a histogram's _sum)."""
    for suffix in ("_total", "_sum", "_count", "_bucket"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _trie_pattern(words: list[str]) -> str:
    """A regex alternation of `words` as a trie (common prefixes once): re tries alternatives one by one,
    so `vllm:a|vllm:b|...` re-reads the prefix for each, and a trie reads it once."""
    trie: dict[str, Any] = {}
    for w in words:
        d = trie
        for ch in w:
            d = d.setdefault(ch, {})
        d[""] = {}

    def emit(d: dict[str, Any]) -> str:
        alts = [re.escape(ch) + emit(d[ch]) for ch in sorted(k for k in d if k)]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 and "" not in d else "(?:" + "|".join(alts) + ")"
        return body + ("?" if "" in d else "")

    return emit(trie)


# The lines worth parsing: samples of a name FLAVORS reads (with the exposition's suffixes), never
# comments or the `_created` timestamps. Matched line by line (split + filter, both in C): twice as fast
# as one multi-line findall over the body, whose `^` is tried at every character.
_KEEP = re.compile(
    "(?:" + _trie_pattern(sorted({_base(n) for n in _metric_names()}))
    + r")(?:_total|_bucket|_sum|_count)?[ \t{]"
)


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

    @staticmethod
    def merged(hists: list[Histogram]) -> Histogram | None:
        """The sum of histograms with the same bucket bounds (replicas of one server); None when the
        bounds differ or there are none, since buckets of different bounds cannot be added."""
        if not hists or any(not np.array_equal(h.bounds, hists[0].bounds) for h in hists[1:]):
            return None
        return Histogram(hists[0].bounds, np.sum([h.cum for h in hists], axis=0), sum(h.sum for h in hists))


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


Sample = tuple[str, dict[str, str], float]  # (name, labels, value) of one sample line


def _parse_lines(lines: list[str]) -> list[Sample]:
    """prometheus_client's parser over sample lines (no comments): one sample per line, in order."""
    from prometheus_client.parser import text_string_to_metric_families

    if not lines:
        return []
    try:
        return [
            (s.name, s.labels, float(s.value))
            for fam in text_string_to_metric_families("\n".join(lines) + "\n")
            for s in fam.samples
        ]
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise LlmtopError(f"malformed Prometheus text: {e}") from None


def _split_value(line: str) -> tuple[str, str] | None:
    """(series text: name and labels as written, value text) of a sample line; None when it has more than
    a value and a timestamp after the series (an exemplar, garbage: the full parser decides)."""
    if "#" in line:  # an exemplar (or a label value with a "#"): not worth the risk of a wrong split
        return None
    end = line.rfind("}") + 1  # the value and timestamp after the labels never hold a "}"
    if not end:
        end = len(line) - len(line.lstrip(" \t"))
        end += len(line[end:].split(None, 1)[0]) if line[end:].strip() else 0
    rest = line[end:].split()
    if not 1 <= len(rest) <= 2:
        return None
    return line[:end], rest[0]


class LineCache:
    """One target's series from its previous scrape: a series seen before is not parsed again.

    prometheus_client's parser spends ~90 % of its time on the label set (quoting, escapes, validation),
    which is the same scrape after scrape; only the value changes. So a line whose series text (`name{...}`
    exactly as written) was parsed before reuses that (name, labels) and reads just its value with float()
    (Prometheus values are Go floats: `+Inf`, `NaN`, exponents, all of which float() reads); new series,
    and any line whose value float() refuses, go to the parser, which also decides what is malformed.
    Holds the latest scrape's series only, so it never grows past one body.
    """

    def __init__(self) -> None:
        self._series: dict[str, tuple[str, dict[str, str]]] = {}
        self.parsed_lines = 0  # lines handed to prometheus_client so far (tests, benchmarks)

    def samples(self, lines: list[str]) -> list[Sample]:
        prev = self._series
        cur: dict[str, tuple[str, dict[str, str]]] = {}
        out: list[Sample | None] = []
        todo: list[tuple[int, str, str | None]] = []  # (index in out, line, series text)
        for ln in lines:
            sv = _split_value(ln)
            hit = prev.get(sv[0]) if sv is not None else None
            if hit is not None and sv is not None:
                try:
                    out.append((hit[0], hit[1], float(sv[1])))
                    cur[sv[0]] = hit
                    continue
                except ValueError:
                    pass
            todo.append((len(out), ln, sv[0] if sv is not None else None))
            out.append(None)
        if todo:
            parsed = _parse_lines([ln for _, ln, _ in todo])
            self.parsed_lines += len(todo)
            if len(parsed) != len(todo):  # cannot happen for sample lines; never guess which is which
                self._series = {}
                return _parse_lines(lines)
            for (i, _, key), smp in zip(todo, parsed, strict=True):
                out[i] = smp
                if key is not None:
                    cur[key] = (smp[0], smp[1])
        self._series = cur
        return out  # type: ignore[return-value]  # every None was filled above


def parse_metrics(
    text: str | bytes, t: float = 0.0, flavor: str | None = None, cache: LineCache | None = None
) -> Scrape:
    """Parse a Prometheus text body; LlmtopError when oversized, malformed, or no known server.

    Only the sample lines of names FLAVORS reads reach the parser (see the module docstring); `cache`
    skips the lines this target sent unchanged last time."""
    if isinstance(text, bytes):
        if len(text) > MAX_METRICS_BYTES:
            raise LlmtopError(f"metrics body of {len(text)} bytes exceeds {MAX_METRICS_BYTES}")
        text = text.decode("utf-8", "replace")
    elif len(text) > MAX_METRICS_BYTES:
        raise LlmtopError(f"metrics body of {len(text)} characters exceeds {MAX_METRICS_BYTES}")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = list(filter(_KEEP.match, text.split("\n")))
    samples = cache.samples(lines) if cache is not None else _parse_lines(lines)
    values: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    by_label: dict[tuple[str, str, str], float] = {}  # (name, label, value) -> summed sample value
    models: set[str] = set()
    isnan, les = math.isnan, _LE
    try:
        for name, labels, v in samples:
            if isnan(v):
                continue
            if "model_name" in labels:
                models.add(labels["model_name"])
            if name.endswith("_bucket") and "le" in labels:
                b = buckets.get(name)
                if b is None:
                    b = buckets[name] = {}
                s_le = labels["le"]
                le = les.get(s_le)
                if le is None:
                    le = float(s_le)
                    if len(les) < 4096:  # bucket bounds repeat scrape after scrape; a hostile server's don't
                        les[s_le] = le
                b[le] = b.get(le, 0.0) + v
            else:
                values[name] = values.get(name, 0.0) + v
                if name in _LABELLED:
                    for lk, lv in labels.items():
                        key = (name, lk, lv)
                        by_label[key] = by_label.get(key, 0.0) + v
    except ValueError as e:  # an `le` that is not a number
        raise LlmtopError(f"malformed Prometheus text: {e}") from None
    buckets = {n[: -len("_bucket")]: b for n, b in buckets.items()}
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
    for key, (metric, label, want) in spec.get("labelled", {}).items():
        if metric in values:  # exported: a label value never seen yet is 0 so far, not unknown
            sc.counters[key] = by_label.get((metric, label, want), 0.0)
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


def _delta(cur: Scrape, base: Scrape | None, k: str) -> float | None:
    """How much counter k grew since `base` (None: since the server started); a drop is a restart."""
    if k not in cur.counters:
        return None
    b = cur.counters[k]
    if base is None or k not in base.counters:
        return b
    a = base.counters[k]
    return b - a if b >= a else b


def derive(
    cur: Scrape,
    prev: Scrape | None,
    hist_base: Scrape | None = None,
    window_hists: dict[str, Histogram] | None = None,
) -> dict[str, float]:
    """The numbers a target row shows: rates since `prev`, percentiles and window counts since `hist_base`
    (default `prev`; None: since the server started), gauges now, lifetime totals.

    Keys: `<counter>_total` (lifetime), gauges as named, `gen_tok_s` / `prompt_tok_s` / `req_s`,
    `preemptions_window` / `aborted_window` / `failed_window`, `prefix_hit` (0..1, the prompt tokens
    found in the prefix cache over the window; also `prefix_queries_window` / `prefix_hits_window`),
    `window_s` (seconds since `hist_base`), per histogram `<h>_count`, `<h>_mean_s`, `<h>_p50_s` /
    `_p90_s` / `_p95_s` / `_p99_s` over the window. `window_hists`, when given, receives the window's
    bucket deltas (a fleet's percentiles come from their sum)."""
    if hist_base is None:
        hist_base = prev
    out: dict[str, float] = {}
    for k, v in cur.counters.items():
        out[f"{k}_total"] = v
    for k, v in cur.gauges.items():
        out[k] = v
    if prev is not None and cur.t > prev.t:
        dt = cur.t - prev.t
        for k in RATES:
            if k in cur.counters and k in prev.counters:
                a, b = prev.counters[k], cur.counters[k]
                if k == "gen_tokens" and cur.live_decoded is not None and prev.live_decoded is not None:
                    # llama.cpp counts a request's tokens only when it ends: add the running ones
                    a, b = a + prev.live_decoded, b + cur.live_decoded
                d = b - a if b >= a else b  # a drop means the server restarted
                name = "req_s" if k == "requests" else f"{k.replace('_tokens', '')}_tok_s"
                out[name] = max(d, 0.0) / dt
    if hist_base is not None and cur.t > hist_base.t:
        out["window_s"] = cur.t - hist_base.t
    for k in WINDOW_COUNTS:
        d = _delta(cur, hist_base, k)
        if d is not None:
            out[f"{k}_window"] = max(d, 0.0)
    queries, hits = _delta(cur, hist_base, "prefix_queries"), _delta(cur, hist_base, "prefix_hits")
    if queries is not None and hits is not None:
        out["prefix_queries_window"], out["prefix_hits_window"] = max(queries, 0.0), max(hits, 0.0)
        if queries > 0:
            out["prefix_hit"] = min(1.0, max(0.0, hits / queries))
    for k, h in cur.hists.items():
        d = h.minus(hist_base.hists.get(k) if hist_base is not None else None)
        if window_hists is not None:
            window_hists[k] = d
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
    "requests": "finished requests",
    "preemptions": "preemptions",
    "prefix_queries": "prefix-cache hit rate",
    "aborted": "aborted requests",
    "failed": "failed requests",
}
ALWAYS_MISSING = ("kernels", "layers", "attention scaling", "roofline")


def capabilities(sc: Scrape) -> tuple[list[str], list[str]]:
    """(what this server's metrics give, what they cannot) for SourceInfo.extra and the kernel panes."""
    have = [*sc.counters, *sc.gauges, *sc.hists]
    can = [CAPABILITIES[k] for k in have if k in CAPABILITIES]
    missing = [CAPABILITIES[k] for k in CAPABILITIES if k not in have]
    return can, [*missing, *ALWAYS_MISSING]
