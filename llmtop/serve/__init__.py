"""`llmtop serve`: an OpenAI-style HTTP server on the llmtop engine, with the agent and vLLM /metrics."""

from llmtop.serve.app import build_app
from llmtop.serve.server import add_serve_arguments, run_server, serve_main

__all__ = ["add_serve_arguments", "build_app", "run_server", "serve_main"]
