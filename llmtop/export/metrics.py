"""llmtop's own statistics as Prometheus/OpenMetrics metrics: a `prometheus_client` Collector over snapshots.

`LlmtopCollector` reads a cumulative Snapshot of an Aggregator (and the latest process/GPU gauge samples)
each time it is scraped, at most once per `min_interval_s` (a burst of scrapes, or several Prometheus
servers, reuse the families built last), and turns it into metric families. Every name is in
docs/METRICS.md; the list is `METRICS` below.

Counters stay monotonic (what `rate()` needs) although the exported kernel set is bounded: at most
`top_n` kernels carry their own `kernel` label and the rest add up under `kernel="other"`. A kernel
that enters the named set starts its series from what it gained since the previous build (what it had
before stays in `other`), and one that leaves it hands its share to `other`; so every series only
grows and the series of a family always sum to the exact total. A named kernel keeps its place until
another one has 10 % more time (no flapping between two kernels of similar cost). Everything starts
from zero again when the aggregator is reset (Prometheus reads that as a counter reset).

This is a sink: it reads Snapshots and CounterSamples; nothing in the chain below imports it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from llmtop.events import CounterSample
from llmtop.export.options import DEFAULT_TOP_N

MIN_INTERVAL_S = 1.0  # a scrape within this long of the last build reuses it
SWAP_MARGIN = 1.10  # an unnamed kernel takes a named one's place only with 10 % more time
OTHER = "other"
# llmtop_step_seconds buckets: TTFT and decode steps of a 135M model on a laptop CPU to a large model's
# long prefill (1 ms .. 60 s)
STEP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                  30.0, 60.0)

# Gauges sampled by collectors/process.py and collectors/gpu.py: CounterSample key -> (metric, scale, help).
PROCESS_GAUGES: dict[str, tuple[str, float, str]] = {
    "cpu_pct": ("llmtop_process_cpu_percent", 1.0,
                "CPU of the profiled process (its whole tree under llmtop run), percent of one core."),
    "rss_bytes": ("llmtop_process_resident_memory_bytes", 1.0, "Resident memory of the profiled process."),
    "threads": ("llmtop_process_threads", 1.0, "Threads of the profiled process."),
    "processes": ("llmtop_process_count", 1.0, "Processes in the profiled tree (llmtop run)."),
    "sys_cpu_pct": ("llmtop_system_cpu_percent", 1.0, "CPU of the whole machine, percent of all cores."),
}
GPU_GAUGES: dict[str, tuple[str, float, str]] = {
    "util_pct": ("llmtop_gpu_utilization_percent", 1.0, "GPU utilization (NVML), percent."),
    "mem_util_pct": ("llmtop_gpu_memory_utilization_percent", 1.0, "GPU memory-bus utilization (NVML)."),
    "mem_used_bytes": ("llmtop_gpu_memory_used_bytes", 1.0, "GPU memory in use."),
    "mem_total_bytes": ("llmtop_gpu_memory_total_bytes", 1.0, "GPU memory in all."),
    "power_w": ("llmtop_gpu_power_watts", 1.0, "GPU power draw."),
    "sm_clock_mhz": ("llmtop_gpu_sm_clock_hertz", 1e6, "GPU SM clock."),
    "temp_c": ("llmtop_gpu_temperature_celsius", 1.0, "GPU temperature."),
}


@dataclass(frozen=True, slots=True)
class MetricInfo:
    name: str  # the family name (counters: the sample name is name + "_total")
    kind: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    help: str


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("llmtop_kernel_seconds", "counter", ("kernel", "op_class"),
               "Kernel (op) time: the top kernels by time, the rest under kernel=\"other\"."),
    MetricInfo("llmtop_kernel_calls", "counter", ("kernel", "op_class"),
               "Kernel (op) launches, same kernel labels as llmtop_kernel_seconds_total."),
    MetricInfo("llmtop_layer_seconds", "counter", ("layer",), "Kernel time inside each decoder layer."),
    MetricInfo("llmtop_step_seconds", "histogram", ("phase",),
               "Step wall time by phase: a prefill's is its time to first token, a decode step's the time "
               "per output token."),
    MetricInfo("llmtop_tokens", "counter", ("phase",),
               "Tokens processed: prompt tokens by prefills, one per sequence by decode steps."),
    MetricInfo("llmtop_generated_tokens", "counter", (),
               "Tokens generated: the first token of each sequence (prefill) and every decode token."),
    MetricInfo("llmtop_kernel_events", "counter", (), "Kernel events folded into the statistics."),
    MetricInfo("llmtop_events_dropped", "counter", (), "Events dropped on the way (a full queue or buffer)."),
    MetricInfo("llmtop_attention_ms_per_1k_ctx", "gauge", (),
               "Attention time per decode step per 1,000 tokens of context (least-squares slope); absent "
               "until decode steps at two context lengths were seen."),
    MetricInfo("llmtop_attention_fit_r2", "gauge", (), "R² of that fit."),
    MetricInfo("llmtop_source_info", "gauge", ("kind", "backend", "device", "model", "dtype"),
               "What is profiled (value 1)."),
    *(MetricInfo(m, "gauge", (), h) for m, _, h in PROCESS_GAUGES.values()),
    *(MetricInfo(m, "gauge", ("gpu",), h) for m, _, h in GPU_GAUGES.values()),
)
_HELP = {m.name: m.help for m in METRICS}


class SnapshotSource(Protocol):
    """What the collector reads: an Aggregator, or anything with its `snapshot`."""

    def snapshot(self, mode: str = ..., group: str = ..., sort: str = ..., filter: str = ...) -> Any: ...


CountersFn = Callable[[], Mapping[str, CounterSample]]


class _TopKernels:
    """The bounded, monotonic kernel series (see the module docstring)."""

    def __init__(self, top_n: int) -> None:
        self.top_n = top_n
        self.reset()

    def reset(self) -> None:
        self.base: dict[tuple[str, str], tuple[float, float]] = {}  # named kernel -> (s, calls) at entry
        self.last: dict[tuple[str, str], tuple[float, float]] = {}  # every kernel's totals at the last build

    def update(self, totals: dict[tuple[str, str], tuple[float, float]]
               ) -> list[tuple[str, str, float, float]]:
        """(kernel, op_class, seconds, calls) rows for cumulative `totals`; `other` last."""
        if any(totals.get(k, (0.0, 0.0))[0] < v[0] - 1e-12 or totals.get(k, (0.0, 0.0))[1] < v[1]
               for k, v in self.last.items()):
            self.reset()  # something went backwards: the aggregator was reset
        named = {k for k in self.base if k in totals}
        ranked = sorted(totals, key=lambda k: (-totals[k][0], k))
        for k in ranked:
            if len(named) >= self.top_n or k in named:
                continue
            named.add(k)
        for k in ranked[: self.top_n]:  # a heavier kernel outside the set takes the weakest one's place
            if k in named:
                continue
            weakest = min(named, key=lambda j: (totals[j][0], j))
            if totals[k][0] > SWAP_MARGIN * totals[weakest][0]:
                named.discard(weakest)
                named.add(k)
        # a kernel entering the set starts from what it gained since the last build: `other` keeps the rest
        self.base = {k: self.base.get(k) or self.last.get(k, (0.0, 0.0)) for k in named}
        self.last = dict(totals)
        rows: list[tuple[str, str, float, float]] = []
        s_named = c_named = 0.0
        for k in sorted(named, key=lambda j: (-totals[j][0], j)):
            s = max(0.0, totals[k][0] - self.base[k][0])
            c = max(0.0, totals[k][1] - self.base[k][1])
            rows.append((k[0], k[1], s, c))
            s_named += s
            c_named += c
        all_s = sum(v[0] for v in totals.values())
        all_c = sum(v[1] for v in totals.values())
        rows.append((OTHER, OTHER, max(0.0, all_s - s_named), max(0.0, all_c - c_named)))
        return rows


def _fmt_bound(b: float) -> str:
    return "+Inf" if math.isinf(b) else repr(float(b))


class LlmtopCollector:
    """A prometheus_client Collector of llmtop's statistics (register it on a CollectorRegistry).

    source: the Aggregator (None until `bind`: a server can be listening before the model has loaded).
    counters: returns the latest CounterSample per source (`pipeline.counters.latest`); sources
    "process" and "gpuN" become the process and GPU gauges, others are ignored.
    """

    def __init__(self, source: SnapshotSource | None = None, counters: CountersFn | None = None, *,
                 top_n: int = DEFAULT_TOP_N, min_interval_s: float = MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if top_n < 1:
            raise ValueError("top_n must be >= 1")
        self.source = source
        self.counters = counters
        self.min_interval_s = min_interval_s
        self.builds = 0
        self._clock = clock
        self._top = _TopKernels(top_n)
        self._lock = threading.Lock()
        self._cache: list[Metric] | None = None
        self._built_at = -math.inf

    @property
    def top_n(self) -> int:
        return self._top.top_n

    def bind(self, source: SnapshotSource | None, counters: CountersFn | None = None) -> None:
        """Point the collector at an aggregator (and gauge samples) once they exist."""
        with self._lock:
            self.source = source
            if counters is not None:
                self.counters = counters
            self._cache = None
            self._top.reset()

    def describe(self) -> list[Metric]:
        # registering must not build a snapshot; names are not checked for clashes (they are llmtop_*)
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self._clock()
            if self._cache is None or now - self._built_at >= self.min_interval_s:
                self._cache = self._build()
                self._built_at = now
                self.builds += 1
            families = self._cache
        yield from families

    # -- building --------------------------------------------------------------------------------
    def _build(self) -> list[Metric]:
        out: list[Metric] = []
        if self.source is not None:
            out += self._from_snapshot(self.source.snapshot(mode="cumulative"))
        if self.counters is not None:
            out += _gauges(self.counters())
        return out

    def _from_snapshot(self, snap: Any) -> list[Metric]:
        rep = snap.report
        out: list[Metric] = []
        totals: dict[tuple[str, str], tuple[float, float]] = {}
        for r in rep.get("kernels") or []:
            k = (str(r["name"]), str(r.get("op_class") or OTHER))
            s, c = totals.get(k, (0.0, 0.0))
            totals[k] = (s + float(r["total_ms"]) / 1e3, c + float(r["count"]))
        secs = CounterMetricFamily("llmtop_kernel_seconds", _HELP["llmtop_kernel_seconds"],
                                   labels=["kernel", "op_class"])
        calls = CounterMetricFamily("llmtop_kernel_calls", _HELP["llmtop_kernel_calls"],
                                    labels=["kernel", "op_class"])
        for name, opc, s, c in self._top.update(totals):
            secs.add_metric([name, opc], s)
            calls.add_metric([name, opc], c)
        out += [secs, calls]

        layers = CounterMetricFamily("llmtop_layer_seconds", _HELP["llmtop_layer_seconds"], labels=["layer"])
        for layer, total_ms, _count in snap.layer_totals():
            layers.add_metric([str(layer)], total_ms / 1e3)
        out.append(layers)

        phases = snap.phase_steps(STEP_BUCKETS_S)
        hist = HistogramMetricFamily("llmtop_step_seconds", _HELP["llmtop_step_seconds"], labels=["phase"])
        toks = CounterMetricFamily("llmtop_tokens", _HELP["llmtop_tokens"], labels=["phase"])
        generated = 0
        for phase, ps in phases.items():
            buckets = [(_fmt_bound(b), float(n)) for b, n in zip(STEP_BUCKETS_S, ps.le, strict=True)]
            buckets.append(("+Inf", float(ps.steps)))
            hist.add_metric([phase], buckets, ps.wall_s)
            toks.add_metric([phase], float(ps.tokens))
            generated += ps.generated
        out += [hist, toks]
        out.append(CounterMetricFamily("llmtop_generated_tokens", _HELP["llmtop_generated_tokens"],
                                       value=float(generated)))
        out.append(CounterMetricFamily("llmtop_kernel_events", _HELP["llmtop_kernel_events"],
                                       value=float(rep.get("events") or 0)))
        dropped = (rep.get("dropped") or {}).get("total") or 0
        out.append(CounterMetricFamily("llmtop_events_dropped", _HELP["llmtop_events_dropped"],
                                       value=float(dropped)))
        att = rep.get("attention") or {}
        if att.get("slope_us_per_1k") is not None:
            out.append(GaugeMetricFamily("llmtop_attention_ms_per_1k_ctx",
                                         _HELP["llmtop_attention_ms_per_1k_ctx"],
                                         value=float(att["slope_us_per_1k"]) / 1e3))
            if att.get("r2") is not None:
                out.append(GaugeMetricFamily("llmtop_attention_fit_r2", _HELP["llmtop_attention_fit_r2"],
                                             value=float(att["r2"])))
        src = rep.get("source") or {}
        if src.get("kind"):
            info = GaugeMetricFamily("llmtop_source_info", _HELP["llmtop_source_info"],
                                     labels=["kind", "backend", "device", "model", "dtype"])
            info.add_metric([str(src.get(k) or "") for k in ("kind", "backend", "device", "model", "dtype")],
                            1.0)
            out.append(info)
        return out


def exposition(registry: Any, accept: str | None) -> tuple[bytes, str]:
    """(body, content type) of `registry` in the format an Accept header asks for (OpenMetrics for
    Prometheus, the 0.0.4 text format otherwise).

    prometheus_client (0.26, issue #1177) writes OpenMetrics sample lines with the colons of a name
    such as `vllm:generation_tokens_total` turned into underscores under `escaping=underscores` while
    its HELP/TYPE lines keep them, so Prometheus would store `vllm_generation_tokens_total`. Colons
    belong to the legacy name set and need no escaping, and every name here is in that set, so the body
    is encoded with allow-utf-8, which writes legacy names exactly as they are."""
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.openmetrics import exposition as om

    encoder, content_type = choose_encoder(accept or "")
    if not content_type.startswith("application/openmetrics-text"):
        return encoder(registry), content_type
    utf8 = getattr(om, "ALLOWUTF8", None)
    try:
        body = om.generate_latest(registry, escaping=utf8) if utf8 else om.generate_latest(registry)
    except TypeError:  # an older prometheus_client: no escaping at all, names written as they are
        body = om.generate_latest(registry)
    return body, content_type


def _gauges(latest: Mapping[str, CounterSample]) -> list[Metric]:
    out: list[Metric] = []
    proc = latest.get("process")
    if proc is not None:
        for key, (metric, scale, help_) in PROCESS_GAUGES.items():
            v = proc.values.get(key)
            if v is not None and math.isfinite(v):
                out.append(GaugeMetricFamily(metric, help_, value=v * scale))
    gpus = sorted((src[3:], s) for src, s in latest.items() if src.startswith("gpu") and src[3:].isdigit())
    for key, (metric, scale, help_) in GPU_GAUGES.items():
        fam = GaugeMetricFamily(metric, help_, labels=["gpu"])
        for idx, s in gpus:
            v = s.values.get(key)
            if v is not None and math.isfinite(v):
                fam.add_metric([idx], v * scale)
        if fam.samples:
            out.append(fam)
    return out


__all__ = ["DEFAULT_TOP_N", "GPU_GAUGES", "METRICS", "MIN_INTERVAL_S", "PROCESS_GAUGES", "STEP_BUCKETS_S",
           "CountersFn", "LlmtopCollector", "MetricInfo", "SnapshotSource", "exposition"]
