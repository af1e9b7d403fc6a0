"""Trace formats, one module each: Kineto JSON, Nsight Systems SQLite, metallic JSONL, doppler logs, and
our own recordings (llmtop_recording). Each registers a `TraceFormat` (name, sniff, reader) in
llmtop.traces.registry when imported; llmtop.traces.open imports every module here and opens files
through that registry. Adding a format is one new module here. common.py and mapping.py are the shared
assembly and mapping rules; they register nothing.

This package imports nothing: open a file with llmtop.traces.open (open_trace, open_traces,
open_trace_file, detect_format).
"""
