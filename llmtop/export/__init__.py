"""llmtop's statistics for other tools: Prometheus/OpenMetrics metrics (docs/METRICS.md).

A sink beside the TUI: it reads Snapshots (stats/) and gauge samples (collectors/) and never imports
Textual; nothing in the chain below it imports it. `metrics.py` turns a cumulative snapshot into metric
families (`LlmtopCollector`), `http.py` serves them on `--metrics-port`, `agent.py` feeds them inside a
process running the agent (`llmtop serve`, `python -m llmtop.agent.run --metrics-port`), and
`options.py` holds the flags. Submodules are imported where they are used, so parsing flags does not
load prometheus_client.
"""
