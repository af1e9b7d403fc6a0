"""Where the real third-party files the tests read live: tests/fixtures/, inside the repository.

Tests never read the workspace-level shared folder (a user's clone has none beside it);
tests/fixtures/SOURCES.md says where each file came from and under which licence.
"""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KINETO_DIR = FIXTURES / "kineto"
NSYS_DIR = FIXTURES / "nsys"
PROMETHEUS_DIR = FIXTURES / "prometheus"

HTA_A100 = KINETO_DIR / "hta_a100_simple_add.json.gz"
MI300X_SGLANG = KINETO_DIR / "tracelens_mi300x_sglang_qwen3_8b_decode.json.gz"
VLLM_CPU = KINETO_DIR / "vllm_cpu_0.32_worker_rank0.pt.trace.json.gz"
NSYS_A100 = NSYS_DIR / "pipit_a100_saxpy_mpi.sqlite"
DOPPLER_LOG = FIXTURES / "seeds" / "doppler_webgpu_gemma3_1b.log"
# a real `llmtop --once` recording of the shipped model decoding 600 tokens (context 38 -> 636)
LONG_CONTEXT = FIXTURES / "llmtop" / "smollm2_600_tokens.llmtop"
