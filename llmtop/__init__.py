"""llmtop: top for LLM inference."""

from importlib.metadata import PackageNotFoundError, version

# The distribution is "llmtop-live" (PyPI's "llmtop" is another project); the version lives in its metadata.
try:
    __version__ = version("llmtop-live")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
