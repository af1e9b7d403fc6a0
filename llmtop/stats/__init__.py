"""llmtop.stats"""
