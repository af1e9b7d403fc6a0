"""The torch backend of `Ops` for "cpu" and "cuda" (float32, bfloat16, float16).

Timing. Every op exists twice: a raw variant (`_x_raw`) and a timed one. The constructor binds the
public names (`self.linear`, ...) to one or the other, so with timing off the hot path runs no timer
code at all and with timing on it pays one timer pair and one `recorder.add` per op, no branches.
- CPU: ops are synchronous, so `time.perf_counter_ns` around the call is the kernel time.
- CUDA: `torch.cuda.Event`s from a pool sized from the model, shared between consecutive ops (n + 1
  events for n ops) on the stream cached for the step; `CudaEventRecorder` resolves them lazily on the
  collector thread (query(), never synchronize) and maps GPU times onto the host `perf_counter_ns`
  clock through an anchor event recorded at `begin_step` (cuda_events.py). An op's time is a span of
  the GPU timeline: GPU idle time waiting for the host's launches is included (see cuda_events.py).

CUDA and the decode loop. Nothing in a step synchronizes but the sampled token's read-back: ids,
positions and gather indices go host -> device as non-blocking copies from pinned memory (torch's
caching host allocator keeps each block until its copy has completed), and sampling reads its result
back through pinned memory and one event wait (torch_sampling.readback_cuda).
Defaults on CUDA: dtype "auto" is bfloat16 (float32 elsewhere); float32 matmuls may use TF32
(`tf32=True`); the engine runs one untimed warm-up forward before the first timed step
(`needs_warmup`, `untimed()`), so cuBLAS set-up and lazily loaded kernels stay out of the timings.

Sampling follows the shared spec (sampling.py, torch half in torch_sampling.py); RoPE inverse
frequencies come from llmtop/model/rope.py, with torch's pow so the tables match transformers bit for bit.

Per-step position state (RoPE cos/sin rows, KV slot indices, attention masks) is derived once from
the `positions` array the engine passes to every layer, and reused by all layers of that step.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llmtop.errors import LlmtopError
from llmtop.events import DECODE, NO_LAYER
from llmtop.kernels.base import KernelRecorder, Ops, SamplingParams
from llmtop.kernels.cuda_events import CudaEventRecorder, CudaTimedOps
from llmtop.kernels.torch_sampling import (
    host_arrays,
    readback_cuda,
    sample_device,
    sample_finish,
    sample_logits,
)
from llmtop.model.config import ModelConfig
from llmtop.model.rope import rope_inv_freq as _rope_inv_freq

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
AUTO_DTYPE = {"cuda": "bfloat16", "cpu": "float32"}  # dtype "auto": what inference runs on each device


def resolve_dtype(device: str, dtype: str) -> str:
    """dtype "auto" -> bfloat16 on CUDA, float32 on CPU; other names unchanged."""
    return AUTO_DTYPE.get(device, "float32") if dtype == "auto" else dtype

_pc = time.perf_counter_ns

# Weights stored (K, N)-major on CPU (see TorchOps._transposed). The tied embedding table is the LM
# head, so it is included; its row gather then reads D strided floats per token (microseconds).
_EMBED = "model.embed_tokens.weight"
_QK = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.bias")
_TRANSPOSED = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "lm_head.weight", _EMBED)


def _rms_row(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of one float32 row (B = T = 1, every decode step at batch 1).

    F.rms_norm is composite on CPU (pow, mean, add, rsqrt, mul, mul over broadcast shapes); for one
    576-wide row, kernel dispatch dominates, so one dot product, the scalar on the host (a CPU
    tensor's item() is a plain read) and two multiplies take under half the time. Same order as
    transformers: weight * (x * rsqrt(mean(x^2) + eps)).
    """
    v = x.view(-1)
    r = 1.0 / math.sqrt(float(torch.dot(v, v)) / v.shape[0] + eps)
    return torch.mul(x, r).mul_(weight)


def _interleave_rows(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """q/k projection rows (or bias) per head from rotate_half order [x0..x(h-1), xh..x(2h-1)] to
    interleaved pairs [x0, xh, x1, x(h+1), ...], the layout complex RoPE needs. q.k is a sum over
    the head dims, so permuting q and k alike leaves attention unchanged; v is untouched."""
    n = w.shape[0]
    heads, half = n // head_dim, head_dim // 2
    rest = w.shape[1:]
    return w.reshape(heads, 2, half, *rest).transpose(1, 2).reshape(n, *rest).contiguous()


def _torch_pow(base: float, exps: np.ndarray) -> np.ndarray:
    """base ** exps by torch's CPU float32 pow: the call transformers makes for its RoPE tables."""
    return (base ** torch.from_numpy(exps)).numpy()


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """llmtop.model.rope.rope_inv_freq with torch's pow, so the tables equal transformers' bit for bit."""
    return _rope_inv_freq(cfg, power=_torch_pow)


def cuda_device_uuid(index: int | None = None) -> str | None:
    """The CUDA device's UUID as torch reports it (hex, without NVML's "GPU-" / "MIG-" prefix, which it
    cannot tell apart), so the GPU gauges can pick the same device whatever CUDA_VISIBLE_DEVICES renumbered
    (collectors/gpu.py compares them prefix-blind); None when torch does not report one."""
    try:
        i = torch.cuda.current_device() if index is None else index
        return str(torch.cuda.get_device_properties(i).uuid) or None
    except Exception:  # older torch, no UUID attribute, no device
        return None


def events_per_step(n_layers: int) -> int:
    """CUDA events one timed step records at most: an anchor, 15 per layer and 4 more ops (embedding,
    final_norm, lm_head, sampling) sharing ends, 2 cut starts (position tables, last-token gather), an end."""
    return 1 + 15 * n_layers + 4 + 2 + 1


def _h2d_host(a: np.ndarray) -> torch.Tensor:
    """Index array -> int64 tensor on the host (CPU backend: no copy for int64 input)."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA backend can run, else a one-line reason."""
    if torch.version.cuda is None:
        return f"CUDA backend unavailable: torch {torch.__version__} was built without CUDA"
    if not torch.cuda.is_available():
        return "CUDA backend unavailable: no NVIDIA GPU visible"
    return None


def _cpu_name(threads: int) -> str:
    name = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name or platform.processor() or platform.machine()} ({threads} threads)"


class _StepPositions:
    """Everything derived from one step's `positions` array, shared by all layers."""

    __slots__ = ("S", "causal", "cis", "cos", "key", "kv_bidx", "kv_pos", "kv_start", "mask", "sin")

    def __init__(self, ops: TorchOps, positions: np.ndarray) -> None:
        self.key = (positions.shape, positions.tobytes())
        B, T = positions.shape
        dev = ops.device
        pos = ops._h2d(positions)  # CUDA: a non-blocking copy from pinned memory
        self.cos = ops._cos[pos][:, :, None]  # (B, T, 1, 1, hd/2)
        self.sin = ops._sin2[pos][:, :, None]  # (B, T, 1, 2, hd/2): [-sin, sin]
        self.cis = ops._cis[pos][:, :, None] if ops._cis is not None else None  # (B, T, 1, hd/2)
        pmax = int(positions.max())
        self.S = pmax + 1  # attention reads only the cache prefix up to the step's max position
        row0 = positions[0]
        same_rows = bool((positions == row0).all())
        consecutive = T == 1 or bool((np.diff(row0) == 1).all())
        self.kv_start = int(row0[0]) if same_rows and consecutive else None
        self.kv_bidx = None
        if self.kv_start is None:
            self.kv_bidx = torch.arange(B, device=dev)[:, None].expand(B, T)
        self.kv_pos = pos
        self.causal = False
        self.mask = None
        if T == 1:
            if not same_rows:  # decode rows of different lengths: hide each row's future slots
                slots = torch.arange(self.S, device=dev)
                self.mask = (slots[None, :] <= pos[:, 0:1]).view(B, 1, 1, self.S)
        elif self.kv_start == 0 and self.S == T:
            self.causal = True  # plain right-padded prefill from slot 0
        else:
            slots = torch.arange(self.S, device=dev)
            self.mask = (slots[None, None, :] <= pos[:, :, None]).unsqueeze(1)  # (B, 1, T, S)


class TorchOps(CudaTimedOps, Ops):
    """Ops on torch for "cpu" or "cuda". `recorder.enabled` at construction decides timing."""

    def __init__(
        self,
        recorder: KernelRecorder | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
        tf32: bool = True,
        gpu_sample_s: float = 2.0,
    ) -> None:
        dtype = resolve_dtype(device, dtype)
        if dtype not in DTYPES:
            raise LlmtopError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
        if device == "cuda":
            reason = cuda_unavailable_reason()
            if reason:
                raise LlmtopError(reason)
        elif device != "cpu":
            raise LlmtopError(f"unknown torch device {device!r} (choose from cpu, cuda)")
        if recorder is None:
            recorder = KernelRecorder()
        if device == "cuda" and not isinstance(recorder, CudaEventRecorder):
            # CUDA timings arrive late: swap in the resolving recorder, keeping names and settings.
            recorder = CudaEventRecorder(recorder.names, enabled=recorder.enabled, track=recorder.track,
                                         pool_size=0, device=torch.cuda.current_device())
        super().__init__(recorder)
        if threads is not None:
            if threads < 1:
                raise LlmtopError(f"--threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.dtype_name = dtype
        self.backend = device
        self.device_uuid: str | None = None
        self.tf32 = False
        if device == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())  # an index: events and streams
            self.device_name = torch.cuda.get_device_name(self.device)
            self.device_uuid = cuda_device_uuid(self.device.index)
            self.timing = "cuda events (GPU-timeline spans)"
            if self.dtype == torch.float32:
                # TF32 matmuls: what float32 inference on Ampere+ runs with (tf32=False: exact float32).
                # The flags are process-wide; this is the engine's process.
                torch.backends.cuda.matmul.allow_tf32 = tf32
                torch.backends.cudnn.allow_tf32 = tf32
                self.tf32 = tf32
        else:
            self.device_name = _cpu_name(torch.get_num_threads())
            self.timing = "perf_counter_ns"
        if not recorder.enabled:
            self.timing = "off"
        elif device == "cuda" and gpu_sample_s > 0:
            # what the GPU really did, beside the event spans: one step every gpu_sample_s under CUPTI
            from llmtop.kernels.gpu_profile import StepSampler

            recorder.sampler = StepSampler(every_s=gpu_sample_s)  # type: ignore[attr-defined]
        if recorder.enabled and device == "cpu" and type(recorder).add is not KernelRecorder.add:
            raise TypeError("CPU timing appends rows to the recorder directly; override _resolve, not add")
        self._ids = recorder.ids
        self._configure(cuda=device == "cuda")
        self._cx = False  # complex RoPE over interleaved q/k rows (set by load_weights)
        self._cis: torch.Tensor | None = None
        self._cfg: ModelConfig | None = None
        self._k_cache: list[torch.Tensor] = []
        self._v_cache: list[torch.Tensor] = []
        self._pos: _StepPositions | None = None
        self._bind(timed=recorder.enabled, cuda=device == "cuda")

    def _configure(self, *, cuda: bool) -> None:
        """Device-dependent code paths. cuda=True: no host scalar reads, no blocking copies (h2d through
        pinned memory, read-back through one event wait), K/V expanded for fused prefill attention."""
        self._serial_decode_attn = not cuda
        self._row_norm = not cuda  # _rms_row reads a scalar on the host: a sync on CUDA
        self._h2d = self._h2d_pinned if cuda else _h2d_host
        self._readback = readback_cuda if cuda else host_arrays
        self._expand_gqa = cuda
        self._cuda_timed = cuda and self.recorder.enabled
        self.needs_warmup = cuda

    def _h2d_pinned(self, a: np.ndarray) -> torch.Tensor:
        """Index array -> int64 device tensor without a sync: staged in pinned memory (torch's caching
        host allocator, which keeps the block until this copy completes), copied with non_blocking."""
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).pin_memory()
        return t.to(self.device, non_blocking=True)

    def _find_peak(self) -> dict[str, Any] | None:
        from llmtop.kernels import peaks

        if self.device.type == "cuda":
            return peaks.cuda_peak(self.device.index or 0, self.dtype_name, self.tf32)
        return peaks.cpu_peak(self.device_name, self.dtype_name)

    def source_extra(self) -> dict[str, Any]:
        """Facts for SourceInfo.extra: the CUDA device's UUID (the GPU gauges follow it) and TF32."""
        if self.device.type != "cuda":
            return {}
        return {"device_uuid": self.device_uuid, "tf32": self.tf32}

    @contextlib.contextmanager
    def untimed(self) -> Any:
        """Run the ops untimed inside the block (the engine's warm-up forward), then rebind as before."""
        bound = {op: self.__dict__[op] for op in self._OPS}
        self._bind(timed=False, cuda=False)
        try:
            yield self
        finally:
            self.__dict__.update(bound)

    # -- binding --------------------------------------------------------------------------
    _OPS = ("embedding", "rmsnorm", "linear", "rope", "kv_write", "attention", "silu_mul", "add", "sample")

    def _bind(self, *, timed: bool, cuda: bool) -> None:
        for op in self._OPS:
            if not timed:
                fn = getattr(self, f"_{op}_raw")
            elif cuda:
                fn = getattr(self, f"_{op}_cuda")
            else:
                fn = getattr(self, f"_{op}_cpu")
            setattr(self, op, fn)

    # The abstract methods are satisfied by these forwarding definitions; instances shadow them
    # with the bound variant chosen in `_bind`, so they never run on the hot path.
    def embedding(self, ids: np.ndarray, table: Any) -> Any:
        return self._embedding_raw(ids, table)

    def rmsnorm(self, x: Any, weight: Any, eps: float, *, name: str, layer: int) -> Any:
        return self._rmsnorm_raw(x, weight, eps, name=name, layer=layer)

    def linear(self, x: Any, weight: Any, bias: Any | None, *, name: str, layer: int) -> Any:
        return self._linear_raw(x, weight, bias, name=name, layer=layer)

    def rope(self, q: Any, k: Any, positions: np.ndarray, *, layer: int) -> tuple[Any, Any]:
        return self._rope_raw(q, k, positions, layer=layer)

    def kv_write(self, k: Any, v: Any, positions: np.ndarray, *, layer: int) -> None:
        return self._kv_write_raw(k, v, positions, layer=layer)

    def attention(self, q: Any, positions: np.ndarray, *, layer: int, phase: int) -> Any:
        return self._attention_raw(q, positions, layer=layer, phase=phase)

    def silu_mul(self, gate: Any, up: Any, *, layer: int) -> Any:
        return self._silu_mul_raw(gate, up, layer=layer)

    def add(self, a: Any, b: Any, *, name: str, layer: int) -> Any:
        return self._add_raw(a, b, name=name, layer=layer)

    def sample(self, logits: Any, params: SamplingParams, generator: Any) -> np.ndarray:
        return self._sample_raw(logits, params, generator)

    # -- setup ----------------------------------------------------------------------------
    def load_weights(self, cfg: ModelConfig, weights: dict[str, np.ndarray]) -> dict[str, Any]:
        self._cfg = cfg
        out: dict[str, Any] = {}
        cpu_f32 = self.device.type == "cpu" and self.dtype == torch.float32
        for name, arr in weights.items():
            wide = name.endswith(_TRANSPOSED) and (name != _EMBED or cfg.tie_embeddings)
            if self.device.type == "cpu" and wide:
                out[name] = self._transposed(weights, name, arr, cpu_f32)
                continue
            t = torch.from_numpy(np.ascontiguousarray(arr))  # zero-copy for float32 on cpu
            if cpu_f32 and name.endswith(_QK):
                t = _interleave_rows(t, cfg.head_dim)  # a copy: the complex RoPE layout
            out[name] = t.to(device=self.device, dtype=self.dtype).contiguous()
        inv = torch.from_numpy(rope_inv_freq(cfg))  # torch's pow: bit-identical to transformers
        pos = torch.arange(cfg.max_context, dtype=torch.float32)
        freqs = pos[:, None] * inv[None, :]  # (max_ctx, hd/2); HF duplicates halves, so keep one
        self._cos = freqs.cos()[:, None].to(self.device, self.dtype)  # (max_ctx, 1, hd/2)
        sin = freqs.sin()
        self._sin2 = torch.stack((-sin, sin), dim=1).to(self.device, self.dtype)  # (max_ctx, 2, hd/2)
        # float32 CPU: q/k rows are interleaved per head (above), so RoPE is one complex multiply
        self._cx = cpu_f32
        self._cis = torch.complex(freqs.cos(), freqs.sin()) if cpu_f32 else None  # (max_ctx, hd/2)
        self._hd = cfg.head_dim
        self._half = cfg.head_dim // 2
        self._hq, self._hkv = cfg.n_heads, cfg.n_kv_heads
        self._group = cfg.n_heads // cfg.n_kv_heads
        self._scale = 1.0 / math.sqrt(cfg.head_dim)
        if self._cuda_timed:
            # events per step: anchor + one per op (shared ends) + the cuts' starts + end; see cuda_events.py
            self.recorder.reserve(events_per_step(cfg.n_layers))
        return out

    def _transposed(self, weights: dict[str, np.ndarray], name: str, arr: np.ndarray, share: bool) -> Any:
        """(N, K) handle whose storage is (K, N) row-major, i.e. `WT.t()`.

        On CPU, MKL's one-row gemm over a (K, N) matrix streams faster than over the HF (N, K)
        layout for wide outputs (SmolLM2 decode, 2 threads: gate/up 1536x576 300 -> 215 us, the
        49152x576 LM head 9.3 -> 5.3 ms); F.linear on the `.t()` view calls exactly that gemm, so
        the op code and the handle's (N, K) shape stay unchanged. Square and narrow outputs (q/o,
        k/v, down) measured the same or slower transposed, so they keep the HF layout.
        When the handle shares the host memory (float32), the caller's array is swapped for an
        equal-valued (N, K) view of the transposed buffer, so the original is freed and RSS does
        not grow; a second load of the same dict then finds it (K, N)-contiguous and copies nothing.
        """
        if arr.flags.f_contiguous and arr.ndim == 2 and arr.dtype == np.float32 and share:
            wt = torch.from_numpy(arr.T)  # already (K, N) row-major: zero copy
        else:
            src = torch.from_numpy(np.ascontiguousarray(arr)).to(self.dtype)
            # numpy's plain malloc of the same byte size as the array it replaces reuses that
            # array's freed heap block on the next weight (torch's 64-byte-aligned allocation
            # does not fit the hole and grew RSS by ~100 MB on SmolLM2)
            dst = np.empty(src.shape[::-1], dtype=np.float32) if share else None
            wt = torch.from_numpy(dst) if dst is not None else torch.empty(src.shape[::-1], dtype=self.dtype)
            wt.copy_(src.t())
            del src
            if dst is not None:
                weights[name] = dst.T
        return wt.t()

    def alloc_kv_cache(self, batch: int, max_ctx: int) -> None:
        cfg = self._cfg
        if cfg is None:
            raise RuntimeError("load_weights must run before alloc_kv_cache")
        if max_ctx > cfg.max_context:
            raise LlmtopError(f"KV cache of {max_ctx} slots exceeds the model context {cfg.max_context}")
        shape = (batch, cfg.n_kv_heads, max_ctx, cfg.head_dim)
        if self._k_cache and tuple(self._k_cache[0].shape) == shape:
            return  # reuse; stale slots are finite and never visible (masked or overwritten first)
        self._k_cache, self._v_cache = [], []  # free the old cache before allocating the new one
        # zeros, not empty: masked slots are multiplied by probability 0, and 0 * NaN garbage = NaN
        dev, dt = self.device, self.dtype
        self._k_cache = [torch.zeros(shape, device=dev, dtype=dt) for _ in range(cfg.n_layers)]
        self._v_cache = [torch.zeros(shape, device=dev, dtype=dt) for _ in range(cfg.n_layers)]
        self._pos = None

    def to_host(self, x: Any) -> np.ndarray:
        return x.detach().to("cpu", torch.float32).numpy()

    def run_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context the engine enters around generation (skips autograd bookkeeping)."""
        return torch.inference_mode()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._k_cache, self._v_cache = [], []
        self._pos = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _positions(self, positions: np.ndarray) -> _StepPositions:
        p = self._pos
        # bytes compare (~0.3 µs) rather than identity: callers may refill one array in place
        if p is None or p.key != (positions.shape, positions.tobytes()):
            p = self._pos = _StepPositions(self, positions)
        return p

    # -- raw ops ----------------------------------------------------------------------------
    def _embedding_raw(self, ids: np.ndarray, table: Any) -> Any:
        return F.embedding(self._h2d(ids), table)

    def _rmsnorm_raw(self, x: Any, weight: Any, eps: float, *, name: str, layer: int) -> Any:
        if x.dtype == torch.float32:
            if self._row_norm and x.shape[0] == 1 and x.shape[1] == 1:
                return _rms_row(x, weight, eps)
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        # half dtypes: normalize in float32 like transformers, then scale in the model dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return weight * xf.to(x.dtype)

    def _linear_raw(self, x: Any, weight: Any, bias: Any | None, *, name: str, layer: int) -> Any:
        return F.linear(x, weight, bias)

    def _rot(self, x: Any, cos: Any, sin2: Any, heads: int) -> Any:
        # halves view (B, T, H, 2, hd/2): [x1, x2] -> [x1, x2]*cos + [x2, x1]*[-sin, sin], i.e.
        # rotate_half without a cat; 3 small kernels instead of 5 (dispatch dominates at decode)
        B, T, _ = x.shape
        xv = x.view(B, T, heads, 2, self._half)
        y = xv * cos
        y.addcmul_(xv.flip(-2), sin2)
        return y.view(B, T, heads * self._hd)

    def _rot_cx(self, x: Any, cis: Any, heads: int) -> Any:
        # interleaved pairs (x[2i], x[2i+1]) as complex numbers: one kernel per tensor
        B, T, _ = x.shape
        y = torch.view_as_complex(x.view(B, T, heads, self._half, 2)) * cis
        return torch.view_as_real(y).view(B, T, heads * self._hd)

    def _rope_raw(self, q: Any, k: Any, positions: np.ndarray, *, layer: int) -> tuple[Any, Any]:
        p = self._positions(positions)
        if self._cx:
            return self._rot_cx(q, p.cis, self._hq), self._rot_cx(k, p.cis, self._hkv)
        return self._rot(q, p.cos, p.sin, self._hq), self._rot(k, p.cos, p.sin, self._hkv)

    def _kv_write_raw(self, k: Any, v: Any, positions: np.ndarray, *, layer: int) -> None:
        p = self._positions(positions)
        B, T, _ = k.shape
        kc, vc = self._k_cache[layer], self._v_cache[layer]
        k4 = k.view(B, T, self._hkv, self._hd)
        v4 = v.view(B, T, self._hkv, self._hd)
        if p.kv_start is not None:  # every row writes the same consecutive slots: one strided copy
            s = p.kv_start
            kc[:B, :, s : s + T].copy_(k4.transpose(1, 2))
            vc[:B, :, s : s + T].copy_(v4.transpose(1, 2))
        else:
            kc[p.kv_bidx, :, p.kv_pos] = k4
            vc[p.kv_bidx, :, p.kv_pos] = v4

    def _attention_raw(self, q: Any, positions: np.ndarray, *, layer: int, phase: int) -> Any:
        p = self._positions(positions)
        B, T, _ = q.shape
        S = p.S
        k = self._k_cache[layer][:B, :, :S]
        v = self._v_cache[layer][:B, :, :S]
        if T == 1:
            # decode: the G query heads sharing a KV head act as G queries of one head, so no
            # K/V repeat is needed; q (B, 1, Hkv*G*hd) -> (B, Hkv, G, hd)
            qh = q.view(B, self._hkv, self._group, self._hd)
            if self._serial_decode_attn:
                # On CPU this kernel is microseconds of work, but SDPA always opens an OpenMP
                # parallel region, and waking the team stalled it ~6 ms per call on 2 busy cores
                # (SmolLM2 decode went 3.9 -> 18 tok/s when run on one thread; toggling costs <1 µs).
                n = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    o = F.scaled_dot_product_attention(qh, k, v, attn_mask=p.mask, scale=self._scale)
                finally:
                    torch.set_num_threads(n)
            else:
                o = F.scaled_dot_product_attention(qh, k, v, attn_mask=p.mask, scale=self._scale)
            return o.view(B, 1, self._hq * self._hd)
        qh = q.view(B, T, self._hq, self._hd).transpose(1, 2)
        gqa = self._group > 1
        if gqa and self._expand_gqa and (self.dtype == torch.float32 or p.mask is not None):
            # CUDA's fused kernel for float32 and for masks (memory-efficient attention) does not take
            # grouped K/V, so SDPA would fall back to the math path that materialises (B, H, T, S) scores;
            # repeating K/V to the query heads costs O(B H S hd) and keeps the fused kernel. (Flash
            # attention takes grouped K/V: half dtypes without a mask keep enable_gqa.)
            # (expand + reshape: one copy kernel, never the host round trip a tensor-repeats path takes)
            full = (B, self._hkv, self._group, S, self._hd)
            k = k[:, :, None].expand(full).reshape(B, self._hq, S, self._hd)
            v = v[:, :, None].expand(full).reshape(B, self._hq, S, self._hd)
            gqa = False
        o = F.scaled_dot_product_attention(
            qh, k, v, attn_mask=p.mask, is_causal=p.causal, scale=self._scale, enable_gqa=gqa
        )
        return o.transpose(1, 2).reshape(B, T, self._hq * self._hd)

    def _silu_mul_raw(self, gate: Any, up: Any, *, layer: int) -> Any:
        return F.silu(gate, inplace=True).mul_(up)  # gate is the op's own fresh output

    def _add_raw(self, a: Any, b: Any, *, name: str, layer: int) -> Any:
        return torch.add(a, b)

    def last_token(self, x: Any, index: np.ndarray) -> Any:
        B, T, _ = x.shape
        if T == 1:
            return x
        if self._cuda_timed:
            self.recorder.cut()  # a gather queued between two ops: the next op gets its own start event
        idx = self._h2d(index)
        return x[torch.arange(B, device=self.device), idx].unsqueeze(1)

    def _sample_raw(self, logits: Any, params: SamplingParams, generator: Any) -> np.ndarray:
        last = logits[:, -1, :]
        if self._readback is host_arrays:
            return sample_logits(last, params, generator)
        return sample_finish(last, sample_device(last, params), params, generator, readback=self._readback)

    # -- timed ops, CPU ---------------------------------------------------------------------
    # Each body is its `_x_raw` twin inlined, so the timed path differs from the untimed one only by
    # the two timer reads and the `recorder.add`: a delegating call (an extra frame with keyword
    # arguments) cost more than the timer itself. Only attention and sampling, whose bodies are
    # long and whose kernels are the slowest per call, still delegate. Rows go straight onto the
    # recorder's step list (what `KernelRecorder.add` does, minus a Python call per op; __init__
    # refuses recorders that override `add`).
    def _embedding_cpu(self, ids: np.ndarray, table: Any) -> Any:
        t0 = _pc()
        y = F.embedding(torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device), table)
        t1 = _pc()
        nid, cid = self._ids["embedding"]
        self.recorder.rows.append((nid, cid, NO_LAYER, t0, t1 - t0, 0, 0, 0))
        return y

    def _rmsnorm_cpu(self, x: Any, weight: Any, eps: float, *, name: str, layer: int) -> Any:
        if x.dtype != torch.float32:
            t0 = _pc()
            y = self._rmsnorm_raw(x, weight, eps, name=name, layer=layer)
        elif x.shape[0] == 1 and x.shape[1] == 1:
            t0 = _pc()
            y = _rms_row(x, weight, eps)
        else:
            t0 = _pc()
            y = F.rms_norm(x, (x.shape[-1],), weight, eps)
        t1 = _pc()
        nid, cid = self._ids[name]
        self.recorder.rows.append((nid, cid, layer, t0, t1 - t0, 0, 0, 0))
        return y

    def _linear_cpu(self, x: Any, weight: Any, bias: Any | None, *, name: str, layer: int) -> Any:
        t0 = _pc()
        y = F.linear(x, weight, bias)
        t1 = _pc()
        nid, cid = self._ids[name]
        s, ws = x.shape, weight.shape
        self.recorder.rows.append((nid, cid, layer, t0, t1 - t0, s[0] * s[1], ws[0], ws[1]))
        return y

    def _rope_cpu(self, q: Any, k: Any, positions: np.ndarray, *, layer: int) -> tuple[Any, Any]:
        t0 = _pc()
        p = self._positions(positions)
        if self._cx:
            y = self._rot_cx(q, p.cis, self._hq), self._rot_cx(k, p.cis, self._hkv)
        else:
            y = self._rot(q, p.cos, p.sin, self._hq), self._rot(k, p.cos, p.sin, self._hkv)
        t1 = _pc()
        nid, cid = self._ids["rope"]
        self.recorder.rows.append((nid, cid, layer, t0, t1 - t0, 0, 0, 0))
        return y

    def _kv_write_cpu(self, k: Any, v: Any, positions: np.ndarray, *, layer: int) -> None:
        t0 = _pc()
        self._kv_write_raw(k, v, positions, layer=layer)
        t1 = _pc()
        nid, cid = self._ids["memcpy:kv_write"]
        self.recorder.rows.append((nid, cid, layer, t0, t1 - t0, 0, 0, 0))

    def _attention_cpu(self, q: Any, positions: np.ndarray, *, layer: int, phase: int) -> Any:
        t0 = _pc()
        y = self._attention_raw(q, positions, layer=layer, phase=phase)
        t1 = _pc()
        nid, cid = self._ids["attention:decode" if phase == DECODE else "attention:prefill"]
        self.recorder.rows.append((nid, cid, layer, t0, t1 - t0, 0, 0, 0))
        return y

    def _silu_mul_cpu(self, gate: Any, up: Any, *, layer: int) -> Any:
        t0 = _pc()
        y = F.silu(gate, inplace=True).mul_(up)
        t1 = _pc()
        nid, cid = self._ids["silu_mul"]
        self.recorder.rows.append((nid, cid, layer, t0, t1 - t0, 0, 0, 0))
        return y

    def _add_cpu(self, a: Any, b: Any, *, name: str, layer: int) -> Any:
        t0 = _pc()
        y = torch.add(a, b)
        t1 = _pc()
        nid, cid = self._ids[name]
        self.recorder.rows.append((nid, cid, layer, t0, t1 - t0, 0, 0, 0))
        return y

    def _sample_cpu(self, logits: Any, params: SamplingParams, generator: Any) -> np.ndarray:
        t0 = _pc()
        y = sample_logits(logits[:, -1, :], params, generator)
        t1 = _pc()
        nid, cid = self._ids["sampling"]
        self.recorder.rows.append((nid, cid, NO_LAYER, t0, t1 - t0, 0, 0, 0))
        return y


__all__ = [
    "AUTO_DTYPE",
    "DTYPES",
    "CudaEventRecorder",
    "TorchOps",
    "cuda_device_uuid",
    "cuda_unavailable_reason",
    "events_per_step",
    "resolve_dtype",
    "rope_inv_freq",
    "sample_logits",
]
