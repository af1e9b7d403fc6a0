"""`llmtop --once`: the prompts run once through the live Pipeline, headless, then one printed report.

The same path as the TUI's `--in-process` run: engine thread -> bounded queue -> aggregator thread, with
the recording (--record) teed from exactly the items the aggregator folds, so `llmtop report` of the
recording equals this report. On any exit, ctrl-c included, the pipeline stops after the current step,
folds and records what was generated so far, and closes the recording.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from llmtop.collectors.engine import EngineCollector
from llmtop.collectors.pipeline import RECORDING_STOPPED, live_pipeline
from llmtop.errors import LlmtopError
from llmtop.kernels.base import SamplingParams
from llmtop.model.engine import Engine, Generation
from llmtop.report import render, with_notes
from llmtop.stats.aggregator import Aggregator


@dataclass
class OnceResult:
    report: dict[str, Any]
    generations: list[Generation]
    prompts: list[str]
    wall_s: float
    recording_error: str | None = None  # --record failed mid-run (disk full): the report is still whole


def run_once(engine: Engine, prompts: list[str], *, batch: int, max_new_tokens: int,
             sampling: SamplingParams, chat: bool, record: str | None, window_s: float,
             metrics: Any = None) -> OnceResult:
    """Generate every prompt once (in `batch` rows; a short last round is filled up cyclically so every
    step has `batch` rows, like the live loop) and return the cumulative report. Closes the engine's ops.
    `metrics`: a --metrics-port server (llmtop.export.http.MetricsServer) to feed while it runs."""
    agg = Aggregator(window_s=window_s)
    gens: list[Generation] = []
    t0 = time.perf_counter()
    try:
        pipeline = live_pipeline(engine, agg, prompts=prompts, batch=batch, max_new_tokens=max_new_tokens,
                                 sampling=sampling, chat=chat, loop=False, record=record, process=False,
                                 gpu=False, on_round=lambda _i, out: gens.extend(out))
        if metrics is not None:
            metrics.bind(pipeline, pipeline.counters.latest)
        with pipeline:
            pipeline.wait_done()
        producer = pipeline.collectors[0]
        assert isinstance(producer, EngineCollector)
        failure = producer.engine_exception
        if isinstance(failure, LlmtopError):
            raise failure
        errors = pipeline.status().errors
        rec_err = [e for e in errors if e.startswith(RECORDING_STOPPED)]
        errors = [e for e in errors if not e.startswith(RECORDING_STOPPED)]
        if failure is not None or errors:
            raise LlmtopError("; ".join(errors) or f"{type(failure).__name__}: {failure}")
    finally:
        engine.ops.close()
    wall = time.perf_counter() - t0
    report = dict(agg.snapshot(mode="cumulative").report)
    if rec_err:  # the measurement is whole; only the file is short: say so where scripts look
        report = with_notes(report, [f"{rec_err[0]}; the report is complete, the recording holds what was "
                                     "written before"])
    return OnceResult(report, gens, prompts, wall, rec_err[0] if rec_err else None)


def render_once(res: OnceResult, fmt: str, *, wide: bool = False) -> str:
    """The generated text(s) and the report: JSON (the report's keys, `warnings` and `skipped` included,
    plus text/finish_reason/prompt_tokens, and `generations` when there are several), text or markdown
    (`wide`: whole kernel names in text)."""
    first = res.generations[0] if res.generations else None
    if fmt == "json":
        out: dict[str, Any] = {
            "text": first.text if first else "",
            "finish_reason": first.finish_reason if first else None,
            "prompt_tokens": first.prompt_tokens if first else 0,
        }
        if len(res.generations) > 1:
            out["generations"] = [
                {"prompt": res.prompts[i % len(res.prompts)], "text": g.text,
                 "finish_reason": g.finish_reason, "prompt_tokens": g.prompt_tokens,
                 "generated": len(g.token_ids)}
                for i, g in enumerate(res.generations)
            ]
        out.update(with_notes(res.report))
        return json.dumps(out, indent=2, allow_nan=False) + "\n"
    md = fmt == "markdown"
    lines: list[str] = []
    for i, g in enumerate(res.generations):
        if len(res.generations) > 1:
            lines.append(f"{'### ' if md else ''}[{i + 1}] {res.prompts[i % len(res.prompts)]}")
        lines.append(g.text)
        lines.append(f"{'_' if md else '('}{g.prompt_tokens} prompt tokens, {len(g.token_ids)} generated, "
                     f"{g.finish_reason}{'_' if md else ')'}")
        lines.append("")
    lines.append(f"wall {res.wall_s:.2f} s" + ("\n" if md else ""))
    return "\n".join(lines) + "\n" + render(res.report, fmt, wide=wide)


__all__ = ["OnceResult", "render_once", "run_once"]
