#!/usr/bin/env bash
# Make sure a Prometheus server binary exists so tests/test_prometheus_real.py scrapes `llmtop serve` with a
# real Prometheus (it skips, with the reason, where there is none). Installs Debian's `prometheus` only when
# no `prometheus` is on PATH. Quiet, non-interactive; the package's service is never started (the test runs
# its own server on a free loopback port with temporary storage).
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_prometheus: no prometheus binary and no apt-get; the real-Prometheus test will skip" >&2
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "ensure_prometheus: no prometheus binary and not root; the real-Prometheus test will skip" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# policy-rc.d or no init system keeps the packaged service from starting in containers; that is fine
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
