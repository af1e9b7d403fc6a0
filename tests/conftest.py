"""Session-wide test set-up: the WebGPU adapters present (report header, parameter) and the fuzz profile."""

from __future__ import annotations

import pytest
from wgpu_adapters import ADAPTERS, NO_ADAPTER


def pytest_report_header(config: pytest.Config) -> str:
    return f"WebGPU adapters: {'; '.join(ADAPTERS) or 'none'}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that take `wgpu_adapter` run once per adapter label, or skip once when there is none."""
    if "wgpu_adapter" in metafunc.fixturenames:
        params = ADAPTERS or [pytest.param(None, marks=pytest.mark.skip(reason=NO_ADAPTER))]
        metafunc.parametrize("wgpu_adapter", params, ids=lambda a: a or "none")
