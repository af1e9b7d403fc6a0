"""`python -m llmtop` = the `llmtop` console script."""

from llmtop.cli import main

raise SystemExit(main())
