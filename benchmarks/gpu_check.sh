#!/usr/bin/env bash
# The prepared GPU check of `llmtop --backend cuda` (issue 20): one short verdict per item, < 8 minutes on one
# GPU. Needs a CUDA build of torch (and transformers, nvidia-ml-py) in $PYTHON, default .venv/bin/python.
#
#   benchmarks/gpu_check.sh              # on a machine with an NVIDIA GPU
#   benchmarks/gpu_check.sh --dry-run    # every item's code path on CPU (CI: tests/test_cuda_gpu_check.py)
#   benchmarks/gpu_check.sh --only cupti,nvml
#
# Items and what each verdict means: benchmarks/gpu_check.py. Exit status 1 when any item FAILs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONUNBUFFERED=1
# The whole check is bounded too (each item has its own limit): 8 minutes, 10 for a dry run on a slow CPU.
limit=480
for a in "$@"; do [ "$a" = "--dry-run" ] && limit=600; done
exec timeout --signal=INT "$limit" "$PY" benchmarks/gpu_check.py "$@"
