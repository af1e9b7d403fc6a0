"""llmtop.traces"""
