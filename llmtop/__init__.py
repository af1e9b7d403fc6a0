"""llmtop: top for LLM inference."""

from typing import Any


def __getattr__(name: str) -> Any:
    """`llmtop.__version__`, read on first use: importlib.metadata costs ~20 ms at every start (a whole
    `llmtop report` of a small trace takes ~0.3 s). The distribution is "llmtop-live" (PyPI's "llmtop" is
    another project); the version lives in its metadata."""
    if name != "__version__":
        raise AttributeError(f"module 'llmtop' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("llmtop-live")
    except PackageNotFoundError:  # a source tree that was never installed
        v = "0+unknown"
    globals()["__version__"] = v
    return v
