"""llmtop.model"""
