"""`llmtop serve`: an OpenAI-style HTTP server on the llmtop engine, with the agent and vLLM /metrics."""

from llmtop.serve.app import add_serve_arguments, build_app, run_server, serve_main

__all__ = ["add_serve_arguments", "build_app", "run_server", "serve_main"]
