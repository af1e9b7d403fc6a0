"""Instrument a plain PyTorch model: one step per top-level forward, one kernel per decoder layer.

Decoder layers are the children of the largest ModuleList whose modules' class names end with
"DecoderLayer" or "Block" (Llama, Qwen, Mistral, GPT-2, ...). Timing: torch.cuda.Event pairs on a
CUDA model (resolved lazily by the drain, never synchronising the decode loop), else perf_counter_ns.
Tokens per step come from the input shape: (B, T) with T > 1 is a prefill of B*T tokens, T == 1 a
decode step producing B tokens.
"""

from __future__ import annotations

import time
from typing import Any

from llmtop.events import DECODE, PREFILL, SourceInfo
from llmtop.kernels.base import KernelRecorder

LAYER_KERNEL = "decoder_layer"


def find_decoder_layers(model: Any) -> list[Any]:
    import torch.nn as nn

    best: list[Any] = []
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > len(best):
            kids = list(mod)
            if kids and all(type(k).__name__.endswith(("DecoderLayer", "Block")) for k in kids):
                best = kids
    return best


class _CudaRecorder(KernelRecorder):
    """Pending = (step start event, [(name id, op class, layer, ev0, ev1)], host t0)."""

    def _resolve(self, rows: list[tuple], pending: Any) -> list[tuple] | None:
        if pending is None:
            return rows
        ev_step, evs, host_t0 = pending
        if evs and not evs[-1][4].query():
            return None
        out = list(rows)
        for nid, opc, layer, e0, e1 in evs:
            start = host_t0 + int(ev_step.elapsed_time(e0) * 1e6)
            out.append((nid, opc, layer, start, int(e0.elapsed_time(e1) * 1e6), 0, 0, 0))
        return out


class TorchInstrumentation:
    """Forward hooks on `model` and its decoder layers, reporting into `agent.recorder`."""

    def __init__(self, agent: Any, model: Any) -> None:
        import torch

        self.model = model
        self.layers = find_decoder_layers(model)
        if not self.layers:
            from llmtop.errors import LlmtopError

            raise LlmtopError(
                f"no decoder layers (…DecoderLayer / …Block in a ModuleList) in {type(model).__name__}"
            )
        try:
            p = next(model.parameters())
            self.device, self.dtype = p.device, str(p.dtype).replace("torch.", "")
        except StopIteration:
            self.device, self.dtype = torch.device("cpu"), ""
        self.cuda = self.device.type == "cuda"
        rec = agent.recorder
        if self.cuda:
            rec = _CudaRecorder(agent.names, track=rec.track)
            agent.add_recorder(rec)
        self.recorder = rec
        self._torch = torch
        self.nid, self.opc = rec.kernel_id(LAYER_KERNEL, "other")
        self.step = 0
        self.ctx = 0
        self._depth = 0
        self._t0: dict[int, Any] = {}
        self._evs: list[tuple] = []
        self._ev_step: Any = None
        self._in_step = False
        self._handles = [
            model.register_forward_pre_hook(self._pre_model, with_kwargs=True),
            model.register_forward_hook(self._post_model),
        ]
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._make_pre(i)))
            self._handles.append(layer.register_forward_hook(self._make_post(i)))

    def source_info(self) -> SourceInfo:
        dev = str(self.device)
        if self.cuda:
            dev = self._torch.cuda.get_device_name(self.device)
        cfg = getattr(self.model, "config", None)
        return SourceInfo(
            kind="live",
            backend=self.device.type,
            device=dev,
            model=str(getattr(cfg, "_name_or_path", "") or type(self.model).__name__),
            dtype=self.dtype,
            timing="cuda events" if self.cuda else "perf_counter_ns",
            max_context=int(getattr(cfg, "max_position_embeddings", 0) or 0),
            n_layers=len(self.layers),
            extra={"instrumented": "torch forward hooks (decoder layers only)"},
        )

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- hooks -------------------------------------------------------------------------------
    def _pre_model(self, module: Any, args: tuple, kwargs: dict) -> None:
        self._depth += 1
        if self._depth > 1:  # re-entrant forward (a wrapper calling itself): one step
            return
        x = kwargs.get("input_ids")
        if x is None and args and hasattr(args[0], "shape"):
            x = args[0]
        if x is None:
            x = kwargs.get("inputs_embeds")
        shape = tuple(getattr(x, "shape", ()) or ())
        b = int(shape[0]) if len(shape) >= 1 else 1
        t = int(shape[1]) if len(shape) >= 2 else 1
        mask = kwargs.get("attention_mask")
        prefill = t > 1 or self.step == 0
        if prefill:
            self.ctx = t
        else:
            self.ctx += 1
        if mask is not None and hasattr(mask, "shape") and len(mask.shape) >= 2:
            self.ctx = int(mask.shape[-1])  # a shape, not a value: no device sync
        self.recorder.begin_step(
            PREFILL if prefill else DECODE, self.step, b * t if prefill else b, b, self.ctx
        )
        self._evs = []
        if self.cuda:
            self._ev_step = self._torch.cuda.Event(enable_timing=True)
            self._ev_step.record()
        self._in_step = True

    def _post_model(self, module: Any, args: tuple, out: Any) -> None:
        self._depth -= 1
        if self._depth > 0 or not self._in_step:
            return
        self._in_step = False
        pending = (self._ev_step, self._evs, self.recorder._step_t0) if self.cuda else None
        self.recorder.end_step(pending)
        self.step += 1

    def _make_pre(self, i: int) -> Any:
        def pre(module: Any, args: tuple) -> None:
            if self.cuda:
                e = self._torch.cuda.Event(enable_timing=True)
                e.record()
                self._t0[i] = e
            else:
                self._t0[i] = time.perf_counter_ns()

        return pre

    def _make_post(self, i: int) -> Any:
        def post(module: Any, args: tuple, out: Any) -> None:
            if not self._in_step:
                return
            t0 = self._t0.pop(i, None)
            if t0 is None:
                return
            if self.cuda:
                e1 = self._torch.cuda.Event(enable_timing=True)
                e1.record()
                self._evs.append((self.nid, self.opc, i, t0, e1))
            else:
                self.recorder.add(self.nid, self.opc, i, t0, time.perf_counter_ns() - t0)

        return post


def install_global_finder(agent: Any) -> Any:
    """Instrument the first model that runs which has decoder layers (zero-code `python -m llmtop.agent.run`).

    A global forward pre-hook inspects each new module once; it removes itself after instrumenting one.
    """
    from torch.nn.modules.module import register_module_forward_pre_hook

    seen: set[int] = set()
    handle: Any = None

    def finder(module: Any, args: tuple) -> None:
        key = id(module)
        if key in seen or handle is None:
            return
        seen.add(key)
        if find_decoder_layers(module):
            handle.remove()
            inst = agent.instrument(module)
            # the hooks were added while this forward was already starting: open its step by hand
            inst._pre_model(module, args, {})

    handle = register_module_forward_pre_hook(finder)
    return handle
