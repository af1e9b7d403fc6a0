"""vLLM under `llmtop run`: one step per engine step, its batch read from vLLM's scheduler.

vLLM flattens every running request into one token dimension (input_ids of shape (T,)), so shapes alone
cannot tell how many prompt tokens a step processed or how many tokens it generated. The model runner
knows: `execute_model(scheduler_output)` gets, per request, the tokens scheduled now and the tokens
already computed. So the runner's methods are patched (class level, in the worker process that imports
the runner module; `llmtop run`'s sitecustomize arms every process vLLM spawns):

- `execute_model` opens a step on every live instrumentation (TorchInstrumentation.begin_engine_step)
  with facts from `step_facts`; a step ends when `sample_tokens` returns (or when execute_model returns
  output itself: pooling, no forward). So step wall = input preparation + forward + logits + sampling,
  and the time the worker waits for the next batch is no step's.
- forwards outside execute_model (vLLM's warm-up and memory-profiling dummy runs) are not steps and
  are not timed (torch_hooks.set_engine_steps).
- the runner's sampler is timed as `sampling`, layer-less, as in the built-in engine.

Per step: prompt tokens = scheduled tokens of requests still in their prompt (chunked prefill counts
each chunk once); sequences that sample = requests whose prompt is complete after this step; phase
prefill when any prompt token ran. tokens/batch then mean what the built-in engine's do (a prefill's
`batch` sequences each sample a first token), so `generated` and `prompt_tokens` equal vLLM's
completion and prompt token counts (less prefix-cache hits, which vLLM does not compute).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from llmtop.events import DECODE, PREFILL

MAX_TRACKED = 65536  # prompt lengths kept for requests the scheduler has not said are finished


class StepFacts:
    """Prompt lengths and computed tokens per request id, across the scheduler outputs of one worker."""

    def __init__(self) -> None:
        self.prompt_len: dict[str, int] = {}

    def __call__(self, so: Any) -> tuple[int, int, int, int]:
        """(phase, tokens, batch, ctx) of the step `so` (a vLLM SchedulerOutput) schedules."""
        plen = self.prompt_len
        for rid in getattr(so, "finished_req_ids", ()) or ():
            plen.pop(rid, None)
        computed: dict[str, int] = {}
        for r in getattr(so, "scheduled_new_reqs", ()) or ():
            ids = getattr(r, "prompt_token_ids", None)
            emb = getattr(r, "prompt_embeds", None)
            n = len(ids) if ids is not None else int(emb.shape[0]) if emb is not None else 0
            if len(plen) >= MAX_TRACKED:  # finished ids never reported: forget the oldest
                plen.pop(next(iter(plen)))
            plen[r.req_id] = n
            computed[r.req_id] = int(r.num_computed_tokens)
        cached = getattr(so, "scheduled_cached_reqs", None)
        if cached is not None:
            for rid, c in zip(cached.req_ids, cached.num_computed_tokens, strict=False):
                computed[rid] = int(c)
        prompt = sampling = ctx = 0
        for rid, n in so.num_scheduled_tokens.items():
            c, p = computed.get(rid, 0), plen.get(rid, 0)
            if c < p:  # (the rest of) a prompt: samples only once the whole prompt has run
                prompt += min(n, p - c)
                sampling += c + n >= p
            else:
                sampling += 1
            ctx = max(ctx, c + n)
        if prompt:
            return PREFILL, prompt, sampling, ctx
        return DECODE, sampling, sampling, ctx


def _live(runner: Any = None) -> list[Any]:
    """The live instrumentations; with `runner`, first claim its model if no forward has found it yet
    (vLLM-CPU runs no warm-up forward: the first request's prefill would otherwise be missed)."""
    from llmtop.agent import torch_hooks

    if runner is not None and not torch_hooks._LIVE and torch_hooks._FINDERS:
        with contextlib.suppress(Exception):
            torch_hooks.claim(runner.get_model())
    return list(torch_hooks._LIVE)


def _wrap_execute_model(orig: Any) -> Any:
    facts = StepFacts()
    seen: set[int] = set()

    def execute_model(self: Any, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        insts = _live(self)
        if insts and getattr(scheduler_output, "total_num_scheduled_tokens", 0):
            try:
                meta = facts(scheduler_output)
            except Exception:  # a vLLM version with other fields: never break the engine
                meta = None
            if meta is not None:
                for inst in insts:
                    inst.begin_engine_step(*meta)
                    if id(inst) not in seen and getattr(self, "sampler", None) is not None:
                        seen.add(id(inst))
                        with contextlib.suppress(Exception):
                            inst.add_module(self.sampler, "sampling", "sampling")
        try:
            out = orig(self, scheduler_output, *args, **kwargs)
        except BaseException:
            for inst in insts:
                inst.close_step()
            raise
        if out is not None:  # no sample_tokens call follows for this step
            for inst in insts:
                inst.close_step()
        return out

    return execute_model


def _wrap_sample_tokens(orig: Any) -> Any:
    def sample_tokens(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return orig(self, *args, **kwargs)
        finally:
            for inst in _live():
                inst.close_step()

    return sample_tokens


def patch_runner(module: Any) -> bool:
    """Patch the model runner class of `module` (vllm.v1.worker.gpu_model_runner). True when patched."""
    from llmtop.agent.torch_hooks import set_engine_steps

    cls = getattr(module, "GPUModelRunner", None)
    if cls is None or getattr(cls.execute_model, "_llmtop_wrapper", False):
        return False
    if not callable(getattr(cls, "execute_model", None)) or not callable(getattr(cls, "sample_tokens", None)):
        print("llmtop: note: this vLLM's model runner has no execute_model/sample_tokens: steps come from "
              "forward shapes (token counts may be wrong)", file=sys.stderr, flush=True)
        return False
    for name, wrap in (("execute_model", _wrap_execute_model), ("sample_tokens", _wrap_sample_tokens)):
        w = wrap(getattr(cls, name))
        w._llmtop_wrapper = True
        w.__wrapped__ = getattr(cls, name)
        setattr(cls, name, w)
    set_engine_steps(True)
    return True


__all__ = ["StepFacts", "patch_runner"]
