"""llmtop.collectors"""
