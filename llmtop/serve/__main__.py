"""`python -m llmtop.serve --backend cpu --model default --port 8000 [--agent 127.0.0.1:7070]`."""

from __future__ import annotations

import argparse
import sys

from llmtop.errors import LlmtopError
from llmtop.serve.server import add_serve_arguments, serve_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmtop.serve", description=__doc__)
    add_serve_arguments(p)
    try:
        return serve_main(p.parse_args(argv))
    except LlmtopError as e:
        print(f"llmtop: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
