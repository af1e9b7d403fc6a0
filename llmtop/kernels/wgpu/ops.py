"""The wgpu backend's ops: the decode loop in our own WGSL kernels (llmtop/kernels/wgsl/) via wgpu-py.

Weights are uploaded once and the KV cache lives on the GPU, both as textures (resources.py). The linear
kernel reads weights as read-only storage textures, one dispatch per row chunk (still one event), and its
input activation as a uniform-buffer window of the activation's storage buffer. Every op is one timed
event recorded into the step's encoder (timing.py); the adapter and device come from device.py.
Sampling: the top-k or softmax shader on the GPU, the rest by the shared spec (kernels/sampling.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import DECODE, NO_LAYER
from llmtop.kernels import sampling
from llmtop.kernels.base import KernelRecorder, Ops, SamplingParams
from llmtop.kernels.selfcheck import SelfCheck, run_self_check
from llmtop.kernels.wgpu.device import (
    TIMINGS,
    adapter_label,
    kv_cache_layout,
    lavapipe_threads,
    open_device,
    pick_adapter,
    quiet_mesa,
    timestamp_period,
)
from llmtop.kernels.wgpu.resources import UNIFORM_MAX, WEIGHT_READS, Resources, WMatrix, WTensor
from llmtop.kernels.wgpu.timing import Timing
from llmtop.model.config import ModelConfig
from llmtop.model.rope import rope_inv_freq

TOPK_MAX = sampling.CANDIDATE_MAX  # largest top_k served by the GPU top-k kernel; larger (or 0): GPU softmax
LINEAR_MAX_MB = 8  # activation rows per linear dispatch (the register tile); also capped by 64 KiB of X
LINEAR_RPT = 8  # row groups of WEIGHT_GROUP rows per invocation (the other side of the register tile)
LINEAR_WG = 8  # workgroup size: one llvmpipe SIMD vector, so small N still spreads over threads
LINEAR_PREFILL_UNROLL = 1  # K-loop unroll when MB > 1 (GEMV unrolls by 2 when K/4 is even); see linear.wgsl


def _grid(n_wg: int) -> tuple[int, int]:
    """Split a 1-D workgroup count over x/y (each dimension is capped at 65535)."""
    gx = min(max(n_wg, 1), 65535)
    return gx, (n_wg + gx - 1) // gx


class WgpuOps(Timing, Resources, Ops):
    backend = "wgpu"

    def __init__(self, recorder: KernelRecorder, dtype: str = "float32", *, timing: str = "auto",
                 power_preference: str = "high-performance", weight_read: str = "auto",
                 adapter: str | None = None, self_check: bool = True) -> None:
        super().__init__(recorder)
        if weight_read not in WEIGHT_READS:
            raise LlmtopError(f"wgpu backend: weight_read must be one of {', '.join(WEIGHT_READS)}, "
                              f"not {weight_read!r}")
        if dtype not in ("float32", "float16"):
            raise LlmtopError(f"wgpu backend: dtype must be float32 or float16, not {dtype!r}")
        if timing not in TIMINGS:
            raise LlmtopError(f"wgpu backend: timing must be auto/inside-pass/per-pass/off, not {timing!r}")
        quiet_mesa()
        lavapipe_threads()
        try:
            import wgpu
            from wgpu.backends.wgpu_native import extras
        except ImportError as e:  # optional dependency
            raise LlmtopError(f"--backend wgpu needs the wgpu package (pip install wgpu): {e}") from None
        self._wgpu, self._extras = wgpu, extras
        self.adapter = pick_adapter(wgpu, adapter, power_preference)
        self.dtype_name = dtype
        self.device, self.features, mode = open_device(self.adapter, dtype, timing)
        self.queue = self.device.queue
        self.mode = mode
        self.max_binding = int(self.device.limits["max-storage-buffer-binding-size"])
        self.max_tex = int(self.device.limits["max-texture-dimension-2d"])
        self.device_name = adapter_label(self.adapter)
        self.timing = {
            "inside-pass": "gpu timestamps inside one pass, per dispatch",
            "per-pass": "gpu timestamps, one pass per dispatch",
            "off": "untimed (adapter has no timestamp-query)" if timing != "off" else "untimed",
        }[mode]
        if mode == "off":
            recorder.enabled = False  # steps report kernel_ns = -1: durations were not measured
        self.tick_ns = timestamp_period(extras, self.device)
        self.cfg: ModelConfig | None = None
        self.kv: list[tuple[Any, Any]] = []  # per layer (K view, V view)
        self._kv_tex: list[tuple[Any, Any]] = []
        self._kv_seg = self._kv_nseg = 1
        self.kv_batch = self.kv_ctx = 0
        self._cos = self._sin = None
        self._init_resources(dtype, weight_read)
        self._init_timing(recorder)
        if self.weight_read == "auto":  # settle it now, so the header can say which path is measured
            self._linear_pipeline(MB=1, RPT=1, G=1, WG=8, K4=1, U=1, **self._x_window())
        # Prove the adapter computes right before anything is profiled (see kernels/selfcheck.py).
        self.self_check: SelfCheck | None = None
        if self_check:
            try:
                self.self_check = run_self_check(self, dtype, self.device_name)
            except Exception:
                self.close()
                raise

    def adapter_summary(self) -> dict[str, Any]:
        """What the header's device strip shows (and recordings keep): adapter, enabled features, the
        limits that shape the kernels, the timing mode and the weight read path."""
        info = self.adapter.info
        lim = self.device.limits
        return {
            "name": info.get("device", ""),
            "backend": info.get("backend_type", ""),
            "type": info.get("adapter_type", ""),
            "features": sorted(self.features),
            "limits": {k: int(lim[k]) for k in ("max-buffer-size", "max-storage-buffer-binding-size",
                                                "max-texture-dimension-2d",
                                                "max-compute-invocations-per-workgroup") if k in lim},
            "timing": self.mode,
            "weight_read": self.weight_read + (f" ({self.weight_read_note})" if self.weight_read_note
                                               else ""),
            "self_check": self.self_check.summary() if self.self_check is not None else None,
        }

    def adapter_info(self) -> dict[str, Any]:
        """Adapter name, backend, all features and limits (the full picture behind adapter_summary)."""
        info = self.adapter.info
        return {
            "name": info.get("device", ""),
            "vendor": info.get("vendor", ""),
            "description": info.get("description", ""),
            "backend": info.get("backend_type", ""),
            "adapter_type": info.get("adapter_type", ""),
            "features": sorted(self.adapter.features),
            "enabled_features": sorted(self.features),
            "limits": dict(self.device.limits),
            "timing": self.timing,
            "timestamp_period_ns": self.tick_ns,
            "weight_read": self.weight_read,
        }

    # -- setup ----------------------------------------------------------------------------------
    def load_weights(self, cfg: ModelConfig, weights: dict[str, np.ndarray]) -> dict[str, Any]:
        for dim in (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim):
            if dim % 4:
                raise LlmtopError(f"wgpu backend needs model dims divisible by 4 (got {dim})")
        self.cfg = cfg
        handles: dict[str, Any] = {}
        for name, w in weights.items():
            arr = np.ascontiguousarray(w, dtype=self._np_dtype)
            if arr.ndim == 2:
                handles[name] = self._upload_matrix(name, arr)
            else:
                flat = arr.reshape(-1)
                handles[name] = WTensor(self._buffer(0, self._U.STORAGE | self._U.COPY_SRC, flat), flat.shape)
        return handles

    def alloc_kv_cache(self, batch: int, max_ctx: int) -> None:
        cfg = self._need_cfg()
        # K and V are 2-D array textures: attention reads them with SIMD texel gathers instead of lavapipe's
        # lane-by-lane storage-buffer loads. Texel (h * hd/4 + d, p % seg) of layer b * nseg + p // seg holds
        # position p of sequence b, so contexts longer than the texture height span several layers.
        width = cfg.n_kv_heads * cfg.head_dim // 4
        layers = int(self.device.limits.get("max-texture-array-layers", 256))
        seg, nseg, n_layers = kv_cache_layout(max_ctx, batch, self.max_tex,
                                              self.adapter.info.get("backend_type", "") == "OpenGL")
        if width > self.max_tex or n_layers > layers:
            raise LlmtopError(f"wgpu backend: a KV cache of {max_ctx} positions x batch {batch} exceeds the "
                              f"adapter's texture limits ({layers} layers of {self.max_tex} positions); "
                              "lower --max-context or batch")
        self._kv_seg, self._kv_nseg = seg, nseg
        TU = self._wgpu.TextureUsage
        usage = TU.TEXTURE_BINDING | TU.STORAGE_BINDING | TU.COPY_SRC

        def cache() -> Any:
            self.n_buffers += 1
            return self.device.create_texture(size=(width, seg, n_layers), format=self._tex_format,
                                              usage=usage)

        self._kv_tex = [(cache(), cache()) for _ in range(cfg.n_layers)]
        self.kv = [(kt.create_view(dimension="2d-array"), vt.create_view(dimension="2d-array"))
                   for kt, vt in self._kv_tex]
        self.kv_batch, self.kv_ctx = batch, max_ctx
        inv = rope_inv_freq(cfg)
        freqs = np.arange(max_ctx, dtype=np.float32)[:, None] * inv[None, :]  # f32 product like torch
        self._cos = self._buffer(0, self._U.STORAGE, np.cos(freqs.astype(np.float64)).astype(np.float32))
        self._sin = self._buffer(0, self._U.STORAGE, np.sin(freqs.astype(np.float64)).astype(np.float32))
        self._bind_groups.clear()
        self._pos_host = None

    def _need_cfg(self) -> ModelConfig:
        if self.cfg is None:
            raise LlmtopError("wgpu backend: load_weights must run before this call")
        return self.cfg

    def upload(self, x: np.ndarray, name: str = "upload") -> WTensor:
        """Host array (B, T, D) -> activation handle (tests, benchmarks). Not timed."""
        arr = np.ascontiguousarray(x, dtype=self._np_dtype)
        t = self._out(name, arr.shape)
        self._submit()
        self.queue.write_buffer(t.buf, 0, arr.reshape(-1))
        return t

    def to_host(self, x: Any) -> np.ndarray:
        if isinstance(x, WMatrix):
            k, g = x.shape[1], x.group
            parts = []
            for t, (_, _, r) in zip(x.textures, x.chunks, strict=True):
                ng = -(-r // g)
                raw = self._texture_to_host(t, ng, k * g)  # undo the row interleaving
                parts.append(raw.reshape(ng, k // 4, g, 4).transpose(0, 2, 1, 3).reshape(ng * g, k)[:r])
            return np.concatenate(parts)
        raw = self._flush(x, x.numel * self._esize)
        assert raw is not None
        return raw.view(self._np_dtype).astype(np.float32).reshape(x.shape)

    def kv_to_host(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """This layer's K and V caches as (batch, n_kv_heads, max_ctx, head_dim) float32 (tests)."""
        cfg = self._need_cfg()
        seg, nseg = self._kv_seg, self._kv_nseg
        shape = (self.kv_batch, nseg * seg, cfg.n_kv_heads, cfg.head_dim)
        k, v = (self._texture_to_host(t, seg, cfg.n_kv_heads * cfg.head_dim, self.kv_batch * nseg)
                .reshape(shape)[:, :self.kv_ctx].transpose(0, 2, 1, 3) for t in self._kv_tex[layer])
        return np.ascontiguousarray(k), np.ascontiguousarray(v)

    def synchronize(self) -> None:
        self._flush(WTensor(self._dummy, (4,)), 16)  # always waits, even with nothing recorded

    def close(self) -> None:
        self._flush()
        self._bind_groups.clear()
        self._pool.clear()
        self._params.clear()
        self.kv = []
        self._kv_tex = []
        self.device.destroy()

    # -- timed ops ------------------------------------------------------------------------------
    def embedding(self, ids: np.ndarray, table: Any) -> WTensor:
        ids = np.asarray(ids)
        b, t = ids.shape
        vocab, d = table.shape
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise LlmtopError(f"token id {int(ids.max())} outside the vocabulary ({vocab})")
        ids_buf = self._write_dynamic("ids", "_ids_buf", ids.astype(np.uint32).reshape(-1))
        self._used_dynamic.add("ids")
        out = self._out("embedding", (b, t, d))
        pl = self._pipeline("embedding", G=table.group)
        gx, gy = _grid((b * t * d // 4 + 63) // 64)
        disp = [(pl, (buf, ids_buf, out.buf, self._param("4I", b * t, d // 4, r0, nr)), gx, gy)
                for buf, r0, nr in table.chunks]
        self._run(disp, "embedding", NO_LAYER)
        return out

    def rmsnorm(self, x: WTensor, weight: WTensor, eps: float, *, name: str, layer: int) -> WTensor:
        d = x.shape[-1]
        rows = x.numel // d
        out = self._out(name, x.shape, (x.buf,))
        pl = self._pipeline("rmsnorm")
        gx, gy = _grid(rows)
        self._run([(pl, (x.buf, weight.buf, out.buf, self._param("IIfI", rows, d // 4, eps, 0)), gx, gy)],
                  name, layer)
        return out

    def linear(self, x: WTensor, weight: WMatrix, bias: WTensor | None, *, name: str, layer: int) -> WTensor:
        n_out, k = weight.shape
        if x.shape[-1] != k:
            raise ValueError(f"{name}: x has K={x.shape[-1]}, weight {weight.shape}")
        m = x.numel // k
        out = self._out(name, (*x.shape[:-1], n_out), (x.buf,))
        bias_buf = bias.buf if bias is not None else self._dummy
        row_bytes = k * self._esize
        disp = []
        m0 = 0
        while m0 < m:
            # X rows m0.. are bound as a 64 KiB uniform window starting at the aligned offset below them
            # (pool buffers carry 64 KiB of slack for this); `xoff` skips the misalignment.
            off = m0 * row_bytes // self._ubo_align * self._ubo_align
            mis = m0 * row_bytes - off
            mb = min(LINEAR_MAX_MB, m - m0, (UNIFORM_MAX - mis) // row_bytes)
            if mb < 1:
                raise LlmtopError(f"wgpu backend: {name} has K={k}; rows over {UNIFORM_MAX} bytes do not "
                                  "fit the uniform input window")
            rpt, wg = LINEAR_RPT, LINEAR_WG
            g, k4 = weight.group, k // 4
            unroll = 2 if mb == 1 else LINEAR_PREFILL_UNROLL
            unroll = unroll if k4 % unroll == 0 else 1
            pl = self._linear_pipeline(MB=mb, RPT=rpt, G=g, WG=wg, K4=k4, U=unroll, **self._x_window())
            xr = (x.buf, off, UNIFORM_MAX)
            for view, r0, nr in weight.chunks:
                prm = self._param("8I", nr, k // 4, m0, r0, n_out, int(bias is not None),
                                  mis // (4 * self._esize), 0)
                groups = (nr + g - 1) // g
                invocations = (groups + rpt - 1) // rpt * g  # g lanes per rpt row groups
                gx, gy = _grid(-(-invocations // wg))
                disp.append((pl, (view, xr, out.buf, bias_buf, prm), gx, gy))
            m0 += mb
        self._run(disp, name, layer, m, n_out, k)
        return out

    def rope(self, q: WTensor, k: WTensor, positions: np.ndarray, *, layer: int) -> tuple[WTensor, WTensor]:
        cfg = self._need_cfg()
        if self._cos is None:
            raise LlmtopError("wgpu backend: alloc_kv_cache must run before rope")
        pos = self._set_positions(positions)
        ntok = int(np.asarray(positions).size)
        half = cfg.head_dim // 2
        pl = self._pipeline("rope")
        prm = self._param("8I", ntok, cfg.n_heads, cfg.n_kv_heads, half, self.kv_ctx, 0, 0, 0)
        gx, gy = _grid((ntok * (cfg.n_heads + cfg.n_kv_heads) * half + 63) // 64)
        self._run([(pl, (q.buf, k.buf, pos, self._cos, self._sin, prm), gx, gy)], "rope", layer)
        return q, k

    def kv_write(self, k: WTensor, v: WTensor, positions: np.ndarray, *, layer: int) -> None:
        cfg = self._need_cfg()
        b, t = np.asarray(positions).shape
        if b > self.kv_batch:
            raise LlmtopError(f"batch {b} exceeds the KV cache batch {self.kv_batch}")
        pos = self._set_positions(positions)
        kc, vc = self.kv[layer]
        hd4 = cfg.head_dim // 4
        prm = self._param("8I", b * t, t, cfg.n_kv_heads, hd4, self.kv_ctx, self._kv_seg, self._kv_nseg, 0)
        gx, gy = _grid((b * t * cfg.n_kv_heads * hd4 + 63) // 64)
        pl = self._pipeline("kv_write", FMT=self._tex_format)
        self._run([(pl, (k.buf, v.buf, pos, kc, vc, prm), gx, gy)], "memcpy:kv_write", layer)

    def attention(self, q: WTensor, positions: np.ndarray, *, layer: int, phase: int) -> WTensor:
        cfg = self._need_cfg()
        b, t = np.asarray(positions).shape
        pos = self._set_positions(positions)
        kc, vc = self.kv[layer]
        out = self._out("attention", q.shape, (q.buf,))
        pl = self._pipeline("attention", G=cfg.n_heads // cfg.n_kv_heads, HD=cfg.head_dim)
        prm = self._param("4If3I", b * t, t, cfg.n_kv_heads, self.kv_ctx, cfg.head_dim ** -0.5, self._kv_seg,
                          self._kv_nseg, 0)
        name = "attention:decode" if phase == DECODE else "attention:prefill"
        self._run([(pl, (q.buf, pos, kc, vc, out.buf, prm), cfg.n_kv_heads, b * t)], name, layer)
        return out

    def _elementwise(self, kernel: str, a: WTensor, b: WTensor, name: str, layer: int) -> WTensor:
        out = self._out(name, a.shape, (a.buf, b.buf))
        n4 = a.numel // 4
        gx, gy = _grid((n4 + 63) // 64)
        self._run([(self._pipeline(kernel), (a.buf, b.buf, out.buf, self._param("4I", n4, 0, 0, 0)), gx, gy)],
                  name, layer)
        return out

    def silu_mul(self, gate: WTensor, up: WTensor, *, layer: int) -> WTensor:
        return self._elementwise("silu_mul", gate, up, "silu_mul", layer)

    def add(self, a: WTensor, b: WTensor, *, name: str, layer: int) -> WTensor:
        return self._elementwise("add", a, b, name, layer)

    def last_token(self, x: WTensor, index: np.ndarray) -> WTensor:
        b, t, d = x.shape
        idx = np.asarray(index).reshape(-1)
        if t == 1:
            return x
        out = self._out("last_token", (b, 1, d), (x.buf,))
        enc = self._encoder()
        self._close_pass()
        row = d * self._esize
        for i in range(b):
            enc.copy_buffer_to_buffer(x.buf, (i * t + int(idx[i])) * row, out.buf, i * row, row)
        return out

    def sample(self, logits: WTensor, params: SamplingParams, generator: Any) -> np.ndarray:
        """GPU top-k (greedy = top-1) or temperature softmax, then the shared spec on the host."""
        v = logits.shape[-1]
        rows = logits.numel // v
        greedy = params.temperature <= 0.0
        k = 1 if greedy else sampling.candidate_count(params, v)
        if k:
            out = self._out("sampling", (rows, k, 2), esize=4)
            pl = self._pipeline("topk")
            prm = self._param("4I", v, k, 0, 0)
            self._run([(pl, (logits.buf, out.buf, prm), rows, 1)], "sampling", NO_LAYER)
            raw = self._flush(out, rows * k * 8)
            assert raw is not None
            cand = raw.view(np.uint32).reshape(rows, k, 2)
            idx = cand[..., 0].astype(np.int64)
            if greedy:
                return idx[:, 0]
            return sampling.sample_candidates(idx, cand[..., 1].copy().view(np.float32), params, generator)
        # Full vocabulary: GPU softmax with temperature, the rest on the host.
        out = self._out("sampling", (rows, v), esize=4)
        pl = self._pipeline("softmax")
        prm = self._param("IfII", v, 1.0 / params.temperature, 0, 0)
        self._run([(pl, (logits.buf, out.buf, prm), rows, 1)], "sampling", NO_LAYER)
        raw = self._flush(out, rows * v * 4)
        assert raw is not None
        return sampling.sample_probs(raw.view(np.float32).reshape(rows, v), params, generator)


def create_wgpu_ops(recorder: KernelRecorder, dtype: str = "float32", adapter: str | None = None) -> WgpuOps:
    """`--backend wgpu` with default options (tests, benchmarks)."""
    return WgpuOps(recorder, dtype, adapter=adapter)


__all__ = ["LINEAR_MAX_MB", "TOPK_MAX", "WgpuOps", "create_wgpu_ops"]
