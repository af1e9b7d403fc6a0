"""`--metrics-port`: llmtop's metrics on their own HTTP endpoint (prometheus_client's threaded server).

The port is bound before anything slow happens (the model load), so a port in use is one line and a
non-zero exit within a second; the collector is pointed at the aggregator once there is one (`bind`).
Until then a scrape gets a valid, empty exposition. Every path answers with the metrics (`/metrics` is
what a scrape config names); `Accept: application/openmetrics-text` gets OpenMetrics, anything else the
Prometheus text format.
"""

from __future__ import annotations

import contextlib

from llmtop.errors import LlmtopError
from llmtop.export.metrics import CountersFn, LlmtopCollector, SnapshotSource
from llmtop.export.options import MetricsOptions


class MetricsServer:
    """An HTTP server with one registry holding one LlmtopCollector; `close()` stops it."""

    def __init__(self, opts: MetricsOptions, collector: LlmtopCollector | None = None) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        self.collector = collector or LlmtopCollector(top_n=opts.top_n)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        try:
            self._httpd, self._thread = start_http_server(opts.port, addr=opts.host, registry=self.registry)
        except OSError as e:
            what = e.strerror or str(e)
            raise LlmtopError(f"cannot serve metrics on {opts.host}:{opts.port}: {what}") from None
        self.host = opts.host
        self.port = int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def bind(self, source: SnapshotSource | None, counters: CountersFn | None = None) -> None:
        self.collector.bind(source, counters)

    def close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        with contextlib.suppress(Exception):
            httpd.shutdown()
            httpd.server_close()
        self._thread.join(2.0)


def start_metrics_server(opts: MetricsOptions, source: SnapshotSource | None = None,
                         counters: CountersFn | None = None) -> MetricsServer:
    server = MetricsServer(opts)
    if source is not None or counters is not None:
        server.bind(source, counters)
    return server


__all__ = ["MetricsServer", "start_metrics_server"]
