"""llmtop.kernels"""
