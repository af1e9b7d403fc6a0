"""dashboards/llmtop.json: valid Grafana dashboard JSON whose every query names only metrics llmtop exports.

The exported names come from real exporters fed with real events: the shipped model generates a few tokens
through `llmtop --once`'s pipeline into a `--metrics-port` server, scraped over HTTP on 127.0.0.1 (with this
process's gauges, and one GPU sample shaped like collectors/gpu.py's, since the machine may have no GPU),
and `llmtop serve`'s /metrics registry (vllm:* names) with the same llmtop collector added. Each query's
PromQL is tokenized; every metric name in it (histogram series by their _bucket/_sum/_count names) must be
one of those. Where `promtool` is installed it also checks that every query parses. The real-Prometheus
test (test_prometheus_real.py) runs every query against a Prometheus scraping `llmtop serve`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "dashboards" / "llmtop.json"

# PromQL words that are not metric names: functions and aggregations (always followed by "("), keywords
FUNCTIONS_OR_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan", "atan2",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Grafana's variables, replaced by values Prometheus accepts (ranges, regexes)
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$instance": ".*"}

_TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:]))
  | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}])
  | (?P<space>\s+)
""", re.VERBOSE)


def substitute(expr: str) -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m, f"cannot tokenize {expr[pos:pos + 30]!r} in {expr!r}"
        if m.lastgroup != "space":
            out.append((m.lastgroup or "", m.group()))
        pos = m.end()
    return out


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects: bare identifiers outside label matchers, label lists
    and function calls, plus literal names in a `__name__` matcher (`{__name__=~"a|b"}`)."""
    expr = substitute(expr)
    if expr.startswith("label_values("):  # Grafana's variable query: label_values(SELECTOR, label)
        expr = expr[len("label_values("):].rsplit(",", 1)[0]
    toks = tokens(expr)
    names: set[str] = set()
    brace = 0
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "{":
            brace += 1
        elif text == "}":
            brace -= 1
        elif kind == "ident" and brace:
            # a label matcher: `label op "value"`; a __name__ matcher names metrics in its value
            if text == "__name__" and i + 2 < len(toks) and toks[i + 2][0] == "string":
                names.update(v for v in toks[i + 2][1][1:-1].split("|") if v)
            i += 2
        elif kind == "ident" and text in LABEL_LIST_KEYWORDS and nxt == "(":
            i = next(j for j in range(i, len(toks)) if toks[j][1] == ")")  # skip the label list
        elif kind == "ident" and (nxt == "(" or nxt in ("by", "without")):
            pass  # a function or an aggregation (`sum by (le) (...)`)
        elif kind == "ident" and text.lower() not in FUNCTIONS_OR_KEYWORDS:
            names.add(text)
        i += 1
    return names


def test_the_tokenizer_finds_metric_names() -> None:
    assert metric_names('histogram_quantile(0.9, sum by (le) (rate(vllm:x_seconds_bucket{a=~"$instance"}'
                        '[$__rate_interval])))') == {"vllm:x_seconds_bucket"}
    assert metric_names('topk(3, sum by (kernel) (increase(a_total[$__range]))) / scalar(sum(b_total))'
                        ' * on (instance) group_left (kernel) c') == {"a_total", "b_total", "c"}
    assert metric_names('label_values({__name__=~"m1|m2"}, instance)') == {"m1", "m2"}
    assert metric_names('x offset 5m and bool y') == {"x", "y"}
    assert metric_names('sum without (gpu) (g) > bool 0') == {"g"}


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target and every Prometheus query variable."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']}", q))
    return out


def test_dashboard_is_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    kinds = {p["type"] for p in dash["panels"]}
    assert {"timeseries", "bargauge", "heatmap", "row"} <= kinds
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"] and t["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for what in ("generation tok/s", "ttft", "inter-token", "top kernels", "per-layer", "attention slope"):
        assert what in titles, f"no {what} panel"


@pytest.fixture(scope="module")
def exported_names() -> set[str]:
    """Sample names of real exporters: the --once pipeline's metrics server and serve's registry."""
    from llmtop.cli import PARSERS, engine_spec
    from llmtop.collectors.engine_worker import build_engine
    from llmtop.events import CounterSample
    from llmtop.export.agent import LocalGauges
    from llmtop.export.http import MetricsServer
    from llmtop.export.metrics import LlmtopCollector
    from llmtop.export.options import MetricsOptions
    from llmtop.kernels.base import SamplingParams
    from llmtop.once import run_once
    from llmtop.serve.metrics import ServeMetrics

    server = MetricsServer(MetricsOptions(0))
    try:
        spec = engine_spec(PARSERS["llmtop"]().parse_args(["--backend", "cpu", "--threads", "1"]))
        run_once(build_engine(spec, note=lambda _t: None), ["Count to ten."], batch=1, max_new_tokens=12,
                 sampling=SamplingParams(), chat=True, record=None, window_s=10.0, metrics=server)
        pipeline = server.collector.source
        local = LocalGauges(gpu=False)
        # the keys collectors/gpu.py samples, for machines without an NVIDIA GPU
        gpu = CounterSample("gpu0", 0, {"util_pct": 50.0, "mem_util_pct": 20.0, "mem_used_bytes": 1e9,
                                        "mem_total_bytes": 8e9, "power_w": 70.0, "sm_clock_mhz": 1500.0,
                                        "temp_c": 60.0})
        server.bind(pipeline, lambda: {**local.latest(), "gpu0": gpu})
        text = httpx.get(server.url, timeout=10).text
        serve = ServeMetrics("m")
        serve.add_collector(LlmtopCollector(pipeline))
        serve_text = serve.exposition(None)[0].decode()
    finally:
        server.close()
    names = set()
    for body in (text, serve_text):
        for fam in text_string_to_metric_families(body):
            names.update(s.name for s in fam.samples)
    return names


def test_every_query_names_exported_metrics(exported_names: set[str]) -> None:
    from llmtop.export.metrics import METRICS

    # the scrape holds what a fed exporter has: kernels, layers, steps, attention fit, gauges
    for must in ("llmtop_kernel_seconds_total", "llmtop_layer_seconds_total", "llmtop_step_seconds_bucket",
                 "llmtop_attention_ms_per_1k_ctx", "llmtop_process_cpu_percent",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket"):
        assert must in exported_names
    documented = {m.name for m in METRICS}
    for n in exported_names:  # every llmtop_* family that exists is in the documented list
        if n.startswith("llmtop_"):
            assert re.sub(r"_(total|bucket|sum|count|created)$", "", n) in documented, n
    dash = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for title, expr in queries(dash):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        missing = names - exported_names
        assert not missing, f"{title}: {sorted(missing)} not exported by llmtop ({expr})"
        used |= names
    assert any(n.startswith("llmtop_") for n in used) and any(n.startswith("vllm:") for n in used)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (.ci/ensure_prometheus.sh installs Debian's prometheus)")
def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    rules = [{"record": f"llmtop:dashboard_query_{i}", "expr": substitute(expr)}
             for i, (title, expr) in enumerate(queries(dash)) if not expr.startswith("label_values(")]
    f = tmp_path / "rules.json"  # promtool reads YAML, and JSON is YAML
    f.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
