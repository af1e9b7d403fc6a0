"""The WebGPU adapters this machine has, found once per test session.

wgpu tests run on every adapter present (`wgpu_adapter` fixture, parametrized in conftest.py) or on the
default one (`needs_adapter`); with none they skip once with the reason below, never with an exception
from inside a test body. WGPU_BACKEND_TYPE (e.g. OpenGL, to reproduce a machine without a Vulkan driver)
restricts the list the same way it restricts the backend.
"""

from __future__ import annotations

import importlib.util

import pytest

from llmtop.kernels.wgpu_backend import list_adapters

ADAPTERS: list[str] = list_adapters()
NO_ADAPTER = ("wgpu (the optional dependency of extra [wgpu]) is not installed"
              if importlib.util.find_spec("wgpu") is None
              else "no WebGPU adapter on this machine (wgpu found none; mesa-vulkan-drivers has lavapipe)")


# Tests that need an adapter skip at collection, with the reason, when the machine has none.
needs_adapter = pytest.mark.skipif(not ADAPTERS, reason=NO_ADAPTER)
