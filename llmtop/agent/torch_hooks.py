"""Instrument a plain PyTorch decoder, op by op, with no change to the user's model code.

ops="all": every Linear / Conv1D, norm, embedding, rotary table, activation (names in torch_ops.py), plus
the attention core and apply_rotary_pos_emb, which are functions: the modeling modules' globals, the
entries of transformers' ALL_ATTENTION_FUNCTIONS and (for non-HF models) torch's
scaled_dot_product_attention are wrapped once per process and time a call only while an instrumented
model's forward runs; a nest guard times one call once. ops="layers": one kernel
`decoder_layer` per decoder layer.

Mechanism: each timed module gets a `forward` instance attribute wrapping its bound forward (2-3x cheaper
per call than a pre + post forward-hook pair, which takes Module._call_impl's slow path; numbers in
benchmarks/bench_agent_ops.py). An exact nn.Linear on CPU calls F.linear itself, skipping Linear.forward's
frame and parameter lookups, so timing it costs less than that frame. On CPU the wrapper appends
(name id, op class, layer, t0, dur, m, n, k) to the recorder's open row list with ids bound at install
time; on CUDA it records a pooled event pair (CudaEventRecorder, resolved by the drain thread with
query(), never a sync). Shapes only: m = rows of the input, n/k from the weight. A model being
instrumented must not be torch.compile'd (the wrappers would break its graphs).

CUDA: each wrapper records on the stream (cached per step) of the device that holds its module's
parameters; function ops (attention, rope) on their decoder layer's device. A model split over GPUs gets one
event lane per device, each resolved against its own anchor. Events come from a pool sized from the model at
install and reused; pairs, not shared events, because the user's code between two timed modules launches
kernels of its own (residual adds, cache updates) that belong to no op. The step's wall is max(host span,
GPU span): an end event is recorded when the step closes, so a forward whose kernels outlive its return is
not under-reported.

Steps: one per top-level forward of the model. Phase, batch, tokens and context come from the inputs'
shapes (and, on CPU, the attention mask's ones). A finished forward's step stays open until the next
top-level forward starts, `close_step()` is called, or transformers' generate returns, so the host work
of the user's token loop (logits processors, stopping criteria, streamers) is part of the step's wall.
A serving engine's adapter (agent/vllm_hooks.py) may drive the steps instead (set_engine_steps,
begin_engine_step, close_step): its scheduler knows each step's batch, which flattened shapes hide.

A model that runs as compiled graphs (torch.compile, vLLM's compilation or CUDA graphs: compiled_reason)
is left unpatched, with one note; so are models whose hooks never fire (one note after three steps).
"""

from __future__ import annotations

import functools
import sys
import time
import weakref
from typing import Any

from llmtop.agent.torch_ops import (
    ATTENTION_CORE,
    LAYER_KERNEL,
    SHARED,
    compiled_reason,
    find_decoder_layers,
    modeling_functions,
    plan_ops,
)
from llmtop.events import DECODE, NO_LAYER, PREFILL, SourceInfo

OPS_MODES = ("all", "layers")
_pc = time.perf_counter_ns

_CUR: Any = None  # the _State of the instrumented model whose top-level forward is running
_LIVE: list[Any] = []  # live TorchInstrumentations (generate's wrapper closes their open steps)
_PATCHES: dict[tuple, list] = {}  # process-wide patches, shared and ref-counted (see _patch)
# Set by a serving engine's adapter (agent/vllm_hooks.py): steps begin and end where the engine's own step
# does (begin_engine_step / close_step), and a forward outside such a step (warm-up, profiling, graph
# capture) is not a step and is not timed.
_ENGINE_STEPS = False


def set_engine_steps(on: bool) -> None:
    global _ENGINE_STEPS
    _ENGINE_STEPS = on


class _State:
    """Per instrumentation; read by the process-wide function wrappers through _CUR."""

    __slots__ = ("attn_dec", "attn_pre", "busy", "cuda", "decode", "inst", "layer", "rec", "rope_ids")

    def __init__(self, inst: Any, rec: Any, cuda: bool) -> None:
        self.inst, self.rec, self.cuda = inst, rec, cuda
        self.layer = NO_LAYER  # the decoder layer running now (set by each layer's forward)
        self.busy = False  # a function op is being timed: nested ones pass through
        self.decode = False  # phase of the open step (picks attention:decode / attention:prefill)
        self.rope_ids = rec.kernel_id("rope", "rope")
        self.attn_pre = rec.kernel_id("attention:prefill", "attention")
        self.attn_dec = rec.kernel_id("attention:decode", "attention")


# -- wrappers (the hot path) --------------------------------------------------------------------------------
def _matmul_cpu(orig: Any, rec: Any, nid: int, opc: int, layer: int, n: int, k: int) -> Any:
    k1 = k or 1

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = _pc()
        y = orig(x, *args, **kwargs)
        rec.rows.append((nid, opc, layer, t0, _pc() - t0, x.numel() // k1, n, k))
        return y

    return forward


def _linear_cpu(mod: Any, orig: Any, rec: Any, nid: int, opc: int, layer: int, n: int, k: int) -> Any:
    """An exact nn.Linear: what Linear.forward does (F.linear), reading the parameters from the module's
    _parameters dict at each call instead of through nn.Module.__getattr__; so timing a Linear costs less
    than the Linear.forward frame it replaces. Falls back to the module's forward if they moved."""
    import torch.nn.functional as F

    params, linear, k1 = mod._parameters, F.linear, k or 1

    def forward(input: Any) -> Any:  # Linear.forward's parameter name, for keyword callers
        t0 = _pc()
        try:
            y = linear(input, params["weight"], params["bias"])
        except KeyError:  # parametrized (torch.nn.utils.parametrize) since it was instrumented
            y = orig(input)
        rec.rows.append((nid, opc, layer, t0, _pc() - t0, input.numel() // k1, n, k))
        return y

    return forward


def _plain_cpu(orig: Any, rec: Any, nid: int, opc: int, layer: int) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        t0 = _pc()
        y = orig(*args, **kwargs)
        rec.rows.append((nid, opc, layer, t0, _pc() - t0, 0, 0, 0))
        return y

    return forward


def _matmul_cuda(orig: Any, rec: Any, nid: int, opc: int, layer: int, n: int, k: int,
                 mark: Any = None) -> Any:
    """`mark`: the recorder's mark for the module's device (CudaEventRecorder.mark / mark_on); rows carry
    the two event indices until the drain resolves them."""
    mark, k1 = mark or rec.mark, k or 1

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        s = mark()
        y = orig(x, *args, **kwargs)
        e = mark()
        rec.rows.append((nid, opc, layer, s, e, x.numel() // k1, n, k))
        return y

    return forward


def _plain_cuda(orig: Any, rec: Any, nid: int, opc: int, layer: int, mark: Any = None) -> Any:
    mark = mark or rec.mark

    def forward(*args: Any, **kwargs: Any) -> Any:
        s = mark()
        y = orig(*args, **kwargs)
        e = mark()
        rec.rows.append((nid, opc, layer, s, e, 0, 0, 0))
        return y

    return forward


def _layer_marker(orig: Any, st: _State, i: int) -> Any:
    """ops="all": a decoder layer's forward is not timed, it only tells function ops their layer."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        st.layer = i
        try:
            return orig(*args, **kwargs)
        finally:
            st.layer = NO_LAYER

    return forward


def _function_wrapper(op: str, ids: tuple[int, int] | None = None) -> Any:
    """A wrapper timed through the running model's _State: attention (prefill or decode by the step's
    phase), rope, or a module with fixed `ids` whose layer is the one running (a module shared by layers).
    Untimed outside an instrumented forward and when nested in another timed function."""
    rope = op == "rope"

    def make(orig: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            st = _CUR
            if st is None or st.busy:
                return orig(*args, **kwargs)
            nid, opc = ids or (st.rope_ids if rope else st.attn_dec if st.decode else st.attn_pre)
            if st.cuda:
                return st.inst._time_fn_cuda(nid, opc, orig, args, kwargs)
            st.busy = True
            t0 = _pc()
            try:
                y = orig(*args, **kwargs)
            finally:
                st.busy = False
            st.rec.rows.append((nid, opc, st.layer, t0, _pc() - t0, 0, 0, 0))
            return y

        return wrapper

    return make


def _matmul_arg(orig: Any, rec: Any, nid: int, opc: int, layer: int, n: int, k: int, arg: int,
                cuda: bool, mark: Any = None) -> Any:
    """A matmul whose activations are positional argument `arg` (vLLM: logits_processor(lm_head, h)).
    Off the per-layer hot path (once per step), so one wrapper serves CPU and CUDA."""
    k1 = k or 1
    if cuda:
        mark = mark or rec.mark

    def forward(*args: Any, **kwargs: Any) -> Any:
        x = args[arg] if len(args) > arg else None
        m = x.numel() // k1 if hasattr(x, "numel") else 0
        if cuda:
            s = mark()
            y = orig(*args, **kwargs)
            e = mark()
            rec.rows.append((nid, opc, layer, s, e, m, n, k))
            return y
        t0 = _pc()
        y = orig(*args, **kwargs)
        rec.rows.append((nid, opc, layer, t0, _pc() - t0, m, n, k))
        return y

    return forward


def _generate_wrapper(orig: Any) -> Any:
    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return orig(self, *args, **kwargs)
        finally:
            for inst in list(_LIVE):
                if inst.model is self or any(m is inst.model for m in self.modules()):
                    inst.close_step()

    return generate


# -- process-wide patches, shared by every instrumentation ----------------------------------------------
def _patch(owner: Any, key: str, make: Any, item: bool = False) -> tuple | None:
    """Replace owner.key (owner[key] when `item`) by make(original), once per process; ref-counted."""
    pid = (id(owner), key, item)
    p = _PATCHES.get(pid)
    if p is not None:
        p[5] += 1
        return pid
    cur = owner[key] if item else getattr(owner, key, None)
    if not callable(cur) or getattr(cur, "_llmtop_wrapper", False):
        return None
    # a GeneralInterface (ALL_ATTENTION_FUNCTIONS) writes to its local mapping: restore by deleting there
    had_local = not item or key in getattr(owner, "_local_mapping", {key: None})
    w = make(cur)
    w._llmtop_wrapper = True
    w.__wrapped__ = cur
    for a in ("__name__", "__qualname__", "__doc__", "__module__"):
        if hasattr(cur, a):
            setattr(w, a, getattr(cur, a))
    if item:
        owner[key] = w
    else:
        setattr(owner, key, w)
    _PATCHES[pid] = [owner, key, item, cur, had_local, 1, w]
    return pid


def _unpatch(pid: tuple | None) -> None:
    p = _PATCHES.get(pid) if pid is not None else None
    if p is None:
        return
    p[5] -= 1
    if p[5] > 0:
        return
    del _PATCHES[pid]
    owner, key, item, orig, had_local, _, w = p
    if item:
        if owner.get(key) is w:
            if had_local:
                owner[key] = orig
            else:
                del owner[key]
    elif getattr(owner, key, None) is w:  # else someone patched over us: leave their chain alone
        setattr(owner, key, orig)


class TorchInstrumentation:
    """Op-level (ops="all") or per-layer (ops="layers") timing of `model`, into `agent.recorder`."""

    def __init__(self, agent: Any, model: Any, ops: str = "all") -> None:
        import torch

        if ops not in OPS_MODES:
            raise ValueError(f"ops must be one of {OPS_MODES}, got {ops!r}")
        from llmtop.errors import LlmtopError

        self.model = model
        self.ops = ops
        self.active = False  # patches in place (True from the end of __init__ until remove())
        self.layers = find_decoder_layers(model)
        if not self.layers:
            raise LlmtopError(
                f"no decoder layers (…DecoderLayer / …Block in a ModuleList) in {type(model).__name__}"
            )
        if any(i.model is model for i in _LIVE):
            raise LlmtopError(f"{type(model).__name__} is already instrumented (remove() that one first)")
        try:
            p = next(model.parameters())
            self.device, self.dtype = p.device, str(p.dtype).replace("torch.", "")
        except StopIteration:
            self.device, self.dtype = torch.device("cpu"), ""
        self.cuda = self.device.type == "cuda"
        rec = agent.recorder
        self._layer_marks: list[Any] | None = None  # CUDA, model over several GPUs: each layer's mark
        if self.cuda:
            from llmtop.kernels.cuda_events import CudaEventRecorder

            rec = CudaEventRecorder(agent.names, track=rec.track, pool_size=0,
                                    device=getattr(self.device, "index", None))
            agent.add_recorder(rec)
        self.recorder = rec
        self._torch = torch
        self.state = _State(self, rec, self.cuda)
        self.step = 0  # steps closed so far
        self.ctx = 0
        self._open = False
        self._depth = 0
        self._patched: list[tuple] = []  # (module, had an instance forward, that forward, our wrapper)
        self._globals: list[tuple | None] = []
        self.n_timed = len(self.layers)  # modules timed (ops="all": set below)
        self.compiled = compiled_reason(model)  # hooks cannot fire inside compiled graphs: time nothing
        self._rows_seen = 0  # rows recorded in the first steps (a check that the hooks fire)
        if self.compiled is not None:
            print(f"llmtop: note: {self.compiled}: op hooks cannot fire inside compiled graphs, so no op is "
                  "timed; run the model eagerly (vLLM: --enforce-eager)", file=sys.stderr, flush=True)
        try:
            if self.compiled is None:
                self._install(model, ops, rec)
                if self.cuda:
                    self._size_pool(ops)
        except BaseException:
            self.remove()
            raise
        _LIVE.append(self)
        self.active = True

    def _install(self, model: Any, ops: str, rec: Any) -> None:
        torch = self._torch
        matmul, plain = (_matmul_cuda, _plain_cuda) if self.cuda else (_matmul_cpu, _plain_cpu)
        self._set_forward(model, self._model_forward(model.forward))
        if self.cuda:
            self._layer_marks = [self._mark_args(layer) for layer in self.layers]
            if all(not m for m in self._layer_marks):
                self._layer_marks = None  # one device: function ops use the recorder's default lane
        if ops == "layers":
            nid, opc = rec.kernel_id(LAYER_KERNEL, "other")
            for i, layer in enumerate(self.layers):
                self._set_forward(layer, plain(layer.forward, rec, nid, opc, i, *self._mark_args(layer)))
        else:
            for i, layer in enumerate(self.layers):
                self._set_forward(layer, _layer_marker(layer.forward, self.state, i))
            plan = plan_ops(model, self.layers)
            self.n_timed = len(plan)
            # calls per step: a module shared by the layers runs once per layer (sizes the CUDA event pool)
            self._calls = sum(len(self.layers) if spec.layer == SHARED else 1 for spec in plan)
            for spec in plan:
                m, f = spec.module, spec.module.forward
                if spec.name == ATTENTION_CORE:  # prefill or decode, by the phase of the running step
                    w = _function_wrapper("attention")(f)
                    self._set_forward(m, w)
                    continue
                nid, opc = rec.kernel_id(spec.name, spec.op_class)
                if spec.layer == SHARED:  # one module called from every layer: the layer at call time
                    w = _function_wrapper("", (nid, opc))(f)
                elif spec.arg:
                    w = _matmul_arg(f, rec, nid, opc, spec.layer, spec.n, spec.k, spec.arg, self.cuda,
                                    *self._mark_args(m))
                elif not spec.n:
                    w = plain(f, rec, nid, opc, spec.layer, *self._mark_args(m))
                elif not self.cuda and type(m) is torch.nn.Linear and "forward" not in m.__dict__:
                    w = _linear_cpu(m, f, rec, nid, opc, spec.layer, spec.n, spec.k)
                else:
                    w = matmul(f, rec, nid, opc, spec.layer, spec.n, spec.k, *self._mark_args(m))
                self._set_forward(m, w)
            self._patch_functions(model)
        gen = sys.modules.get("transformers.generation.utils")
        mixin = getattr(gen, "GenerationMixin", None)
        if mixin is not None and "generate" in mixin.__dict__:
            self._globals.append(_patch(mixin, "generate", _generate_wrapper))

    def add_module(self, mod: Any, name: str, op_class: str) -> None:
        """Time one more module outside the model (a serving engine's sampler), layer-less."""
        if self.compiled is not None or "forward" in mod.__dict__:
            return
        nid, opc = self.recorder.kernel_id(name, op_class)
        plain = _plain_cuda if self.cuda else _plain_cpu
        self._set_forward(mod, plain(mod.forward, self.recorder, nid, opc, NO_LAYER, *self._mark_args(mod)))

    # -- CUDA: which device's stream each wrapper records on, and the event pool --------------------------
    def _mark_args(self, mod: Any) -> tuple:
        """() on CPU; on CUDA (mark,) for the device holding `mod`'s parameters (or buffers), or () when that
        is the model's own device (the wrappers then use the recorder's default lane)."""
        if not self.cuda:
            return ()
        dev = None
        for t in (*mod.parameters(), *mod.buffers()):
            dev = getattr(t, "device", None)
            break
        idx = getattr(dev, "index", None) if getattr(dev, "type", None) == "cuda" else None
        if idx is None or idx == getattr(self.device, "index", None):
            return ()
        return (functools.partial(self.recorder.mark_on, self.recorder.lane(idx)),)

    def _size_pool(self, ops: str) -> None:
        """Events per step from the model: a pair per timed module and per attention/rope call of each layer,
        an anchor and an end per device; for STEPS_IN_FLIGHT // 2 steps (the agent drains at 20 Hz)."""
        from llmtop.kernels.cuda_events import STEPS_IN_FLIGHT

        L = len(self.layers)
        calls = L if ops == "layers" else getattr(self, "_calls", self.n_timed) + 2 * L
        per_step = 2 * calls + 2 * len(self.recorder.devices) + 8
        self.recorder.reserve(per_step, STEPS_IN_FLIGHT // 2)

    def _set_forward(self, mod: Any, fwd: Any) -> None:
        d = mod.__dict__
        fwd.__wrapped__ = mod.forward  # inspect.signature sees the real one (HF generate checks it)
        self._patched.append((mod, "forward" in d, d.get("forward"), fwd))
        d["forward"] = fwd

    def _patch_functions(self, model: Any) -> None:
        for pymod, fname, op in modeling_functions(model):
            self._globals.append(_patch(pymod, fname, _function_wrapper(op)))
        attn = _function_wrapper("attention")
        mu = sys.modules.get("transformers.modeling_utils")
        registry = getattr(mu, "ALL_ATTENTION_FUNCTIONS", None)
        if registry is not None:
            for key in list(registry.keys()):
                self._globals.append(_patch(registry, key, attn, item=True))
        hf = getattr(mu, "PreTrainedModel", None)
        if hf is None or not isinstance(model, hf):  # HF models reach it through the registry's wrappers
            self._globals.append(_patch(self._torch.nn.functional, "scaled_dot_product_attention", attn))

    def source_info(self) -> SourceInfo:
        dev = str(self.device)
        if self.cuda:
            dev = self._torch.cuda.get_device_name(self.device)
        cfg = getattr(self.model, "config", None)
        if self.compiled is not None:
            what = f"nothing timed: {self.compiled}"
        elif self.ops == "layers":
            what = "torch forward patches (decoder layers only)"
        else:
            n_fn = sum(1 for g in self._globals if g is not None and g[1] != "generate")
            what = f"torch forward patches ({self.n_timed} modules, {n_fn} attention/rope functions)"
        return SourceInfo(
            kind="live",
            backend=self.device.type,
            device=dev,
            model=str(getattr(cfg, "_name_or_path", "") or type(self.model).__name__),
            dtype=self.dtype,
            timing="cuda events" if self.cuda else "perf_counter_ns",
            max_context=int(getattr(cfg, "max_position_embeddings", 0) or 0),
            n_layers=len(self.layers),
            extra={"instrumented": what, "ops": self.ops},
        )

    def remove(self) -> None:
        """Close the open step and undo every patch (instance forwards, shared function patches)."""
        self.close_step()
        for mod, had, prev, fwd in reversed(self._patched):
            d = mod.__dict__
            if d.get("forward") is fwd:
                if had:
                    d["forward"] = prev
                else:
                    del d["forward"]
        self._patched = []
        for pid in self._globals:
            _unpatch(pid)
        self._globals = []
        if self in _LIVE:
            _LIVE.remove(self)
        self.active = False

    # -- steps ----------------------------------------------------------------------------------------------
    def _model_forward(self, orig: Any) -> Any:
        st = self.state

        def forward(*args: Any, **kwargs: Any) -> Any:
            global _CUR
            if self._depth:  # re-entrant forward (a wrapper calling itself): the same step
                return orig(*args, **kwargs)
            self._depth = 1
            prev = _CUR
            try:
                if not _ENGINE_STEPS:
                    self._begin(args, kwargs)
                elif not self._open:  # warm-up / profiling run outside the engine's steps: not timed
                    _CUR = None
                    return orig(*args, **kwargs)
                _CUR = st
                return orig(*args, **kwargs)
            finally:
                self._depth = 0
                _CUR = prev
                st.layer = NO_LAYER
                st.busy = False

        return forward

    def _begin(self, args: tuple, kwargs: dict) -> None:
        self.close_step()
        try:
            phase, tokens, batch, ctx = self._meta(args, kwargs)
        except Exception:  # odd inputs must never break the user's forward
            phase, tokens, batch, ctx = (PREFILL if self.step == 0 else DECODE), 1, 1, self.ctx
        self.state.decode = phase == DECODE
        self.recorder.begin_step(phase, self.step, tokens, batch, ctx)
        self._open = True

    def begin_engine_step(self, phase: int, tokens: int, batch: int, ctx: int) -> None:
        """A serving engine's step starts (its adapter knows the batch from its scheduler)."""
        self.close_step()
        self.state.decode = phase == DECODE
        self.ctx = ctx
        self.recorder.begin_step(phase, self.step, tokens, batch, ctx)
        self._open = True

    def close_step(self) -> None:
        """End the open step now (the next forward, generate's return and remove() call this too)."""
        if self._open:
            self._open = False
            if self.step < 3 and self.compiled is None:
                self._check_fired(len(self.recorder.rows))
            self.recorder.end_step()
            self.step += 1

    def _check_fired(self, rows: int) -> None:
        """After three steps without one timed op, the model runs somewhere the patches cannot see
        (compiled or captured after we looked): say so once, rather than show empty panes."""
        self._rows_seen += rows
        if self.step == 2 and not self._rows_seen:
            print("llmtop: note: 3 steps ran but no instrumented op fired: the model looks compiled or "
                  "captured into graphs (torch.compile, CUDA graphs); run it eagerly (vLLM: --enforce-eager)",
                  file=sys.stderr, flush=True)

    def _meta(self, args: tuple, kwargs: dict) -> tuple[int, int, int, int]:
        """(phase, tokens, batch, ctx) from shapes; on CPU, prompt tokens from the mask's ones."""
        x = kwargs.get("input_ids")
        if x is None and args and hasattr(args[0], "shape"):
            x = args[0]
        if x is None:
            x = kwargs.get("inputs_embeds")
        shape = tuple(getattr(x, "shape", ()) or ())
        b = int(shape[0]) if shape else 1
        t = int(shape[1]) if len(shape) >= 2 else 1
        cp = kwargs.get("cache_position")
        if cp is not None and len(getattr(cp, "shape", ())) == 1:
            t = int(cp.shape[0])
        past = self._past_len(kwargs)
        mask = kwargs.get("attention_mask")
        mshape = tuple(getattr(mask, "shape", ()) or ())
        prefill = t > 1 or self.step == 0 or past == 0
        if past is not None:
            ctx = past + t
        elif len(mshape) >= 2:
            ctx = int(mshape[-1])  # a shape, not a value: no device sync
        else:
            ctx = t if prefill else self.ctx + t
        self.ctx = ctx
        if not prefill:
            return DECODE, b, b, ctx
        tokens = b * t
        if len(mshape) == 2 and mask.device.type == "cpu":
            ones = int(mask[:, -t:].sum())  # exact prompt tokens under left padding (host memory)
            if 0 < ones <= tokens:
                tokens = ones
        return PREFILL, tokens, b, ctx

    def _past_len(self, kwargs: dict) -> int | None:
        """Tokens already in the KV cache, where that is a host-side lookup; None when unknown."""
        cache = kwargs.get("cache")
        if cache is None:
            cache = kwargs.get("past_key_values")
        if cache is None:
            return None
        if isinstance(cache, (tuple, list)):  # legacy ((k, v), ...) with k (B, H, S, D)
            return int(cache[0][0].shape[-2]) if cache else 0
        get = getattr(cache, "get_seq_length", None)
        if get is None or (self.cuda and type(cache).__name__ != "DynamicCache"):
            return None  # a static cache may count filled slots on the device: not on the hot path
        return int(get())

    # -- function ops (attention, rope), called by the process-wide wrappers --------------------------------
    def _time_fn_cuda(self, nid: int, opc: int, orig: Any, args: tuple, kwargs: dict) -> Any:
        """A function op (attention, rope) on the stream of its decoder layer's device."""
        st, rec = self.state, self.recorder
        layer, marks = st.layer, self._layer_marks
        mark = rec.mark
        if marks is not None and 0 <= layer < len(marks) and marks[layer]:
            mark = marks[layer][0]
        st.busy = True
        try:
            s = mark()
            y = orig(*args, **kwargs)
            e = mark()
        finally:
            st.busy = False
        rec.rows.append((nid, opc, layer, s, e, 0, 0, 0))
        return y


class _Finder:
    """Handle of install_global_finder: `.remove()` disarms it."""

    def __init__(self, module_cls: Any, orig_call: Any) -> None:
        self.module_cls = module_cls
        self.orig_call = orig_call
        self.call: Any = None
        self.removed = False

    def remove(self) -> None:
        self.removed = True
        _FINDERS[:] = [f for f in _FINDERS if f[0] is not self]
        if self.module_cls.__dict__.get("__call__") is self.call:
            self.module_cls.__call__ = self.orig_call


_FINDERS: list[tuple[_Finder, Any, str]] = []  # armed finders, for claim()


def claim(module: Any) -> bool:
    """Instrument `module` now, through an armed global finder that has not found its model yet (a
    serving engine's adapter knows the model before its first forward). True when it was instrumented."""
    for handle, agent, ops in list(_FINDERS):
        if handle.removed or any(i.model is module for i in _LIVE) or not find_decoder_layers(module):
            continue
        handle.remove()
        try:
            agent.instrument(module, ops=ops)
        except Exception as e:  # never break the user's program
            print(f"llmtop: could not instrument {type(module).__name__}: {e}", file=sys.stderr)
            return False
        return True
    return False


def install_global_finder(agent: Any, ops: str = "all") -> _Finder:
    """Instrument the first module that runs whose subtree has decoder layers (zero-code runs).

    torch's global forward pre-hooks do not see keyword arguments, so `nn.Module.__call__` is wrapped
    until the model is found: it is instrumented before its forward starts, and that first call then goes
    through the instrumented forward with its real args and kwargs (HF generate passes input_ids=...).
    """
    import torch.nn as nn

    orig_call = nn.Module.__dict__["__call__"]
    seen: weakref.WeakSet[Any] = weakref.WeakSet()
    handle = _Finder(nn.Module, orig_call)

    def call(module: Any, *args: Any, **kwargs: Any) -> Any:
        if not handle.removed and module not in seen:
            seen.add(module)
            if not any(i.model is module for i in _LIVE) and find_decoder_layers(module):
                handle.remove()
                try:
                    agent.instrument(module, ops=ops)
                except Exception as e:  # never break the user's program
                    print(f"llmtop: could not instrument {type(module).__name__}: {e}", file=sys.stderr)
        return orig_call(module, *args, **kwargs)

    handle.call = call
    nn.Module.__call__ = call
    _FINDERS.append((handle, agent, ops))
    return handle


__all__ = [
    "LAYER_KERNEL",
    "OPS_MODES",
    "TorchInstrumentation",
    "claim",
    "find_decoder_layers",
    "install_global_finder",
]
