"""The fast paths of /metrics parsing give exactly what prometheus_client gives on the whole body.

`parse_metrics` hands prometheus_client only the sample lines of names it reads, and `LineCache` reads only
the value of a series it parsed at an earlier scrape; both must agree with a plain parse of every line of
the real captures, scrape after scrape (values changed, series added and gone, bad lines refused).
"""

from __future__ import annotations

import math
import re

import pytest
from fixture_paths import PROMETHEUS_DIR as FIX
from prometheus_client.parser import text_string_to_metric_families

from llmtop.attach.metrics import FLAVORS, LineCache, Scrape, derive, parse_metrics
from llmtop.errors import LlmtopError

BODIES = [FIX / n for n in ("vllm_cpu_0.32_idle.txt", "vllm_cpu_0.32_after_requests.txt",
                            "llamacpp_server_idle.txt", "llamacpp_server_scrape1_after_request.txt")]


def reference(text: str) -> dict[str, float]:
    """Every number parse_metrics derives, from prometheus_client over the whole body, summed by hand."""
    values: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    labelled: dict[tuple[str, str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if math.isnan(s.value):
                continue
            if s.name.endswith("_bucket") and "le" in s.labels:
                b = buckets.setdefault(s.name[: -len("_bucket")], {})
                b[float(s.labels["le"])] = b.get(float(s.labels["le"]), 0.0) + s.value
            else:
                values[s.name] = values.get(s.name, 0.0) + s.value
                for k, v in s.labels.items():
                    labelled[(s.name, k, v)] = labelled.get((s.name, k, v), 0.0) + s.value
    flavor = "vllm" if any(n.startswith("vllm:") for n in values) else "llamacpp"
    spec, out = FLAVORS[flavor], {}
    for kind in ("counter", "gauge"):
        for key, cands in spec[kind].items():
            hit = next((c for c in cands if c in values), None)
            if hit is not None:
                out[key] = values[hit]
    for key, (metric, label, want) in spec.get("labelled", {}).items():
        if metric in values:
            out[key] = labelled.get((metric, label, want), 0.0)
    for key, cands in spec["histogram"].items():
        hit = next((c for c in cands if c in buckets), None)
        if hit is not None:
            for le, c in buckets[hit].items():
                out[f"{key}@{le}"] = c
            out[f"{key}_sum"] = values.get(hit + "_sum", 0.0)
    return out


def flat(sc: Scrape) -> dict[str, float]:
    out = {**sc.counters, **sc.gauges}
    for k, h in sc.hists.items():
        for le, c in zip(h.bounds, h.cum, strict=True):
            out[f"{k}@{float(le)}"] = float(c)
        out[f"{k}_sum"] = h.sum
    return out


def bump(text: str, k: float) -> str:
    """The same body with every sample value scaled, as the next scrape of a busy server looks."""
    return re.sub(r"^([^#\s][^\n]*?\s)(\S+)$", lambda m: f"{m.group(1)}{float(m.group(2)) * k!r}", text,
                  flags=re.M)


def test_filtered_and_cached_parse_equal_a_full_parse() -> None:
    cache = LineCache()
    seen = 0
    for k in (1.0, 1.5, 2.25):
        for path in BODIES:
            text = bump(path.read_text(), k)
            want = reference(text)
            assert flat(parse_metrics(text)) == pytest.approx(want)
            assert flat(parse_metrics(text.encode(), cache=cache)) == pytest.approx(want)
            seen += 1
    # after the first scrape of a body the series are known: only values are read, no line is parsed
    parsed = cache.parsed_lines
    parse_metrics(bump(BODIES[-1].read_text(), 3.0), cache=cache)
    assert cache.parsed_lines == parsed
    assert seen == 12


def test_cached_parse_refuses_what_the_parser_refuses() -> None:
    cache = LineCache()
    good = BODIES[1].read_text()
    parse_metrics(good, cache=cache)
    bad = good.replace('vllm:num_requests_running{engine="0",model_name="tiny"} 0.0',
                       'vllm:num_requests_running{engine="0",model_name="tiny"} zero')
    with pytest.raises(LlmtopError, match="malformed"):
        parse_metrics(bad, cache=cache)
    with pytest.raises(LlmtopError, match="malformed"):
        parse_metrics(bad)
    # a timestamp after the value is allowed; a known series with a new label set is parsed afresh
    ts = good.replace('vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0',
                      'vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0 1700000000000')
    assert parse_metrics(ts, cache=cache).gauges["waiting"] == 4.0
    two = good + 'vllm:num_requests_waiting{engine="1",model_name="tiny"} 3.0\n'
    assert parse_metrics(two, cache=cache).gauges["waiting"] == 3.0


def test_window_counts_and_prefix_hits_from_the_vllm_capture() -> None:
    idle, after = (parse_metrics(p.read_text(), t=t) for p, t in ((BODIES[0], 0.0), (BODIES[1], 10.0)))
    v = derive(after, idle)
    assert v["requests_total"] == 3.0 and v["req_s"] == pytest.approx(0.3)
    assert v["preemptions_window"] == 0.0 and v["aborted_window"] == 0.0 and v["failed_window"] == 0.0
    assert v["prefix_queries_window"] == 13.0 and v["prefix_hit"] == 0.0
    assert v["window_s"] == 10.0
