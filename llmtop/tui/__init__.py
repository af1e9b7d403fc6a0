"""llmtop.tui"""
