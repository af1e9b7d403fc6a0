"""WebGPU backend: the decode loop in our own WGSL kernels (llmtop/kernels/wgsl/) via wgpu-py.

Design:
- Weights are uploaded once; the KV cache lives on the GPU. 2-D weights and the KV cache are textures
  (one texel = 4 values; see linear.wgsl for why). The linear kernel reads weights as read-only storage
  textures, which interleave G = 8 rows texel by texel (texel (i*G + l, g) = W[g*G + l, 4i..4i+3]) so the
  8 SIMD lanes of a lavapipe gather read contiguous memory; weights are split into row chunks within the
  texture-dimension and storage-binding limits (one dispatch per chunk, still one event). The linear
  kernel reads its input activation as a uniform-buffer window of the activation's storage buffer.
- On machines with <= 2 CPUs the backend runs lavapipe's dispatches inline (LP_NUM_THREADS=0) unless the
  user set LP_NUM_THREADS: see `_lavapipe_threads` for the measured trade-off.
- Every op records into one command encoder that is submitted only at sync points (sampling,
  `to_host`, `synchronize`, end of step). Activations come from a per-op-name pool of two buffers
  that grow to a power of two, uniform parameter buffers are cached by content and bind groups by
  their buffers, so a decode step allocates no GPU memory.
- Timing: a timestamp pair around each op. With `timestamp-query-inside-passes` one long compute
  pass holds all dispatches and `write_timestamp` brackets each op; otherwise each op gets its own
  pass with pass-level `timestamp_writes`. The query set is resolved into a MAP_READ buffer once per
  step, in the same submit and map that reads the sampled token back (no extra sync). Ticks are
  scaled by the queue's timestamp period and each step is anchored on `time.perf_counter_ns`.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import DECODE, NO_LAYER
from llmtop.kernels.base import KernelRecorder, Ops, SamplingParams
from llmtop.kernels.selfcheck import SelfCheck, run_self_check
from llmtop.model.config import ModelConfig

TOPK_MAX = 64  # largest top_k served by the GPU top-k kernel; larger (or 0) samples from GPU softmax
LINEAR_MAX_MB = 8  # activation rows per linear dispatch (the register tile); also capped by 64 KiB of X
LINEAR_RPT = 8  # row groups of WEIGHT_GROUP rows per invocation (the other side of the register tile)
LINEAR_WG = 8  # workgroup size: one llvmpipe SIMD vector, so small N still spreads over threads
LINEAR_PREFILL_UNROLL = 1  # K-loop unroll when MB > 1 (GEMV unrolls by 2 when K/4 is even); see linear.wgsl
WEIGHT_GROUP = 8  # weight rows interleaved per texture row: lavapipe's SIMD width with 256-bit vectors
WEIGHT_READS = ("auto", "storage", "sampled")
_UNIFORM_MAX = 65536  # WebGPU's guaranteed max-uniform-buffer-binding-size
_QUERIES_PER_SET = 4096  # wgpu's per-query-set maximum

# Test hook: (kernel name, WGSL source) -> source, applied before every shader is compiled. Tests set it
# to break one kernel on purpose and check that the start-up self-check refuses the adapter.
SHADER_HOOK: Callable[[str, str], str] | None = None


def _grid(n_wg: int) -> tuple[int, int]:
    """Split a 1-D workgroup count over x/y (each dimension is capped at 65535)."""
    gx = min(max(n_wg, 1), 65535)
    return gx, (n_wg + gx - 1) // gx


def _unroll_tile(src: str, counts: dict[str, int]) -> str:
    """Expand linear.wgsl's register tile: repeat each line ending in //@ for every combination of the
    placeholders it contains ({r}, {j}, {u} -> counts["r"], ...); naga/llvmpipe then keep every accumulator
    in registers."""
    out = []
    for ln in src.splitlines():
        combos: list[dict[str, int]] = [{}]
        if ln.rstrip().endswith("//@"):
            for name, n in counts.items():
                if "{" + name + "}" in ln:
                    combos = [{**c, name: i} for c in combos for i in range(n)]
        for c in combos:
            s = ln
            for name, i in c.items():
                s = s.replace("{" + name + "}", str(i))
            out.append(s)
    return "\n".join(out)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """inv_freq (hd/2,) float32, computed like transformers' ROPE_INIT_FUNCTIONS."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv = inv.astype(np.float32)
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind in (None, "default"):
        return inv
    if kind == "linear":
        return (inv / np.float32(rs["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = float(rs["factor"])
        low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old_ctx = float(rs["original_max_position_embeddings"])
        low_wl, high_wl = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        return np.where(medium, smoothed, out).astype(np.float32)
    raise LlmtopError(f"wgpu backend: unsupported rope_scaling type {kind!r}")


def enumerate_adapters(wgpu: Any) -> list[Any]:
    """Every adapter wgpu finds, restricted to WGPU_BACKEND_TYPE when the user forced a backend (wgpu-py
    applies that variable to request_adapter only)."""
    found = list(wgpu.gpu.enumerate_adapters_sync())
    forced = os.environ.get("WGPU_BACKEND_TYPE", "").strip()
    return [a for a in found if not forced or a.info.get("backend_type", "").lower() == forced.lower()]


def list_adapters() -> list[str]:
    """Labels of the adapters present (tests parametrize over them); [] without wgpu or an adapter."""
    _quiet_mesa()
    _lavapipe_threads()
    try:
        import wgpu
        return [adapter_label(a) for a in enumerate_adapters(wgpu)]
    except Exception:  # no wgpu, no driver: nothing to list
        return []


def pick_adapter(wgpu: Any, name: str | None, power_preference: str) -> Any:
    """The adapter to run on: the first whose "device (backend)" contains `name` (case-insensitive), or
    wgpu's choice for `power_preference`. wgpu-py also honours WGPU_BACKEND_TYPE (Vulkan, OpenGL, Metal,
    D3D12) and WGPUPY_WGPU_ADAPTER_NAME."""
    if name:
        found = enumerate_adapters(wgpu)
        labels = [adapter_label(a) for a in found]
        for a, label in zip(found, labels, strict=True):
            if name.lower() in label.lower():
                return a
        raise LlmtopError(f"--backend wgpu: no WebGPU adapter matches {name!r} (present: "
                          f"{'; '.join(labels) or 'none'})")
    # wgpu-py logs "Forcing backend: X" as a warning when WGPU_BACKEND_TYPE is set: the user asked for it,
    # and a second stderr line would break both the TUI and the one-line error below.
    log = logging.getLogger("wgpu")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        adapter = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
    except Exception as e:
        adapter = None
        err = str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        err = "request_adapter returned nothing"
    finally:
        log.setLevel(level)
    if adapter is None:
        raise LlmtopError(f"--backend wgpu: no WebGPU adapter ({err}); install a Vulkan/Metal driver, "
                          "e.g. mesa-vulkan-drivers")
    return adapter


def adapter_label(adapter: Any) -> str:
    """The adapter as errors and --adapter name it: "device (backend)", e.g.
    "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)"."""
    info = adapter.info
    return f"{info.get('device', '?')} ({info.get('backend_type', '?')})"


def _quiet_mesa() -> None:
    # Mesa's WSI layer prints an XDG_RUNTIME_DIR error on headless machines, which would tear the TUI.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        d = os.path.join(tempfile.gettempdir(), f"llmtop-xdg-{os.getuid()}")
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = d


def _lavapipe_threads() -> None:
    """Run lavapipe's compute dispatches inline on small machines (LP_NUM_THREADS=0) unless the user chose.

    lavapipe hands every dispatch to LP_NUM_THREADS worker threads (default: one per CPU) and waits for
    them. Measured on a loaded 2-CPU VM: that handoff costs 50-250 µs per dispatch (an empty dispatch)
    against 4-20 µs inline, a SmolLM2 decode step is ~450 dispatches, and the second core is often busy:
    SmolLM2 decode 7.0-7.9 tok/s inline vs 5.7-6.1 with 2 worker threads (benchmarks/bench_wgpu_decode.py),
    60-token prefill 2.6-3.0 s vs 3.5 s. The cost: kernels with few workgroups and much work, such as
    long-context decode attention, run on one core (21 vs 16 ms per 1k tokens of context per layer);
    set LP_NUM_THREADS to choose. llvmpipe reads the variable when the Vulkan driver enumerates its device,
    i.e. before the first adapter request in the process.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    if "LP_NUM_THREADS" not in os.environ and cpus <= 2:
        os.environ["LP_NUM_THREADS"] = "0"


def kv_cache_layout(max_ctx: int, batch: int, max_tex: int, opengl: bool) -> tuple[int, int, int]:
    """(positions per layer, layers per sequence, array layers to allocate) of a KV cache texture.

    The cache is bound as a `texture_2d_array`. WebGPU on OpenGL cannot say so when the texture is made:
    wgpu-hal's GL backend guesses the view dimension from the layer count (1 -> 2-D, 6 -> cube, a
    multiple of 6 above that -> cube array) and a 2d-array view of such a texture reads and writes the
    wrong texels: llvmpipe-over-GL decoded garbage this way with exit 0. So a sequence always spans at
    least two layers (the same memory, split in two), and on OpenGL a count that would read as a cube
    gets one spare layer.
    """
    seg = min(max_ctx, max_tex)
    nseg = -(-max_ctx // seg)
    if batch * nseg == 1:
        seg, nseg = -(-max_ctx // 2), 2
    n_layers = batch * nseg
    if opengl and n_layers % 6 == 0:
        n_layers += 1
    return seg, nseg, n_layers


@dataclass(slots=True)
class WTensor:
    """Activation/vector handle: a GPU buffer holding a row-major array of `shape` (may be oversized)."""

    buf: Any
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


@dataclass(slots=True)
class WMatrix:
    """(N, K) weight as row chunks of 2-D textures: [(view, first row, rows)].

    Textures, not storage buffers: lavapipe gathers texels with SIMD loads but loads storage buffers
    one lane at a time (see linear.wgsl). Each texture row holds `group` weight rows interleaved texel by
    texel (K/4 * group texels wide); linear reads them as storage textures, the embedding gather as
    sampled textures. Chunks keep each texture within the adapter's dimension limit.
    """

    chunks: list[tuple[Any, int, int]]
    shape: tuple[int, int]
    textures: list[Any]
    group: int = 1


class WgpuOps(Ops):
    backend = "wgpu"

    def __init__(self, recorder: KernelRecorder, dtype: str = "float32", *, timing: str = "auto",
                 power_preference: str = "high-performance", weight_read: str = "auto",
                 adapter: str | None = None, self_check: bool = True) -> None:
        super().__init__(recorder)
        if weight_read not in WEIGHT_READS:
            raise LlmtopError(f"wgpu backend: weight_read must be one of {', '.join(WEIGHT_READS)}, "
                              f"not {weight_read!r}")
        # How linear.wgsl reads weights: "storage" (read-only storage texture, lavapipe's fast path) or
        # "sampled" (texture_2d + textureLoad, for adapters that refuse read-only storage textures);
        # "auto" tries storage on the first linear and falls back once.
        self.weight_read = weight_read
        self.weight_read_note: str | None = None  # why "auto" fell back to sampled textures
        if dtype not in ("float32", "float16"):
            raise LlmtopError(f"wgpu backend: dtype must be float32 or float16, not {dtype!r}")
        if timing not in ("auto", "inside-pass", "per-pass", "off"):
            raise LlmtopError(f"wgpu backend: timing must be auto/inside-pass/per-pass/off, not {timing!r}")
        _quiet_mesa()
        _lavapipe_threads()
        try:
            import wgpu
            from wgpu.backends.wgpu_native import extras
        except ImportError as e:  # optional dependency
            raise LlmtopError(f"--backend wgpu needs the wgpu package (pip install wgpu): {e}") from None
        self._wgpu, self._extras = wgpu, extras
        self.adapter = adapter = pick_adapter(wgpu, adapter, power_preference)
        feats = set(adapter.features)
        want: list[str] = []
        self.dtype_name = dtype
        if dtype == "float16":
            if "shader-f16" not in feats:
                raise LlmtopError(f"--backend wgpu --dtype float16: adapter {adapter.info['device']!r} "
                                  "lacks shader-f16")
            want.append("shader-f16")
        if timing == "off" or "timestamp-query" not in feats:
            mode = "off"
        elif timing == "auto":
            mode = "inside-pass" if "timestamp-query-inside-passes" in feats else "per-pass"
        else:
            mode = timing
        if mode == "inside-pass" and "timestamp-query-inside-passes" not in feats:
            raise LlmtopError("wgpu backend: adapter lacks timestamp-query-inside-passes")
        if mode != "off":
            want.append("timestamp-query")
        if mode == "inside-pass":
            want.append("timestamp-query-inside-passes")
        if "timestamp-query-inside-encoders" in feats:
            want.append("timestamp-query-inside-encoders")  # lets benchmarks time buffer copies
        lim = adapter.limits
        limits = {k: lim[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size",
                                      "max-storage-buffers-per-shader-stage", "max-texture-dimension-2d",
                                      "max-compute-workgroup-storage-size") if k in lim}
        self.device = adapter.request_device_sync(required_features=want, required_limits=limits)
        self.queue = self.device.queue
        self.features = frozenset(want)
        self.mode = mode
        self.max_binding = int(self.device.limits["max-storage-buffer-binding-size"])
        self.max_tex = int(self.device.limits["max-texture-dimension-2d"])
        self._ubo_align = int(self.device.limits.get("min-uniform-buffer-offset-alignment", 256))
        self.device_name = adapter_label(adapter)
        self.timing = {
            "inside-pass": "gpu timestamps inside one pass, per dispatch",
            "per-pass": "gpu timestamps, one pass per dispatch",
            "off": "untimed (adapter has no timestamp-query)" if timing != "off" else "untimed",
        }[mode]
        if mode == "off":
            recorder.enabled = False  # steps report kernel_ns = -1: durations were not measured
        self.tick_ns = self._timestamp_period()
        self._esize = 2 if dtype == "float16" else 4
        self._np_dtype = np.float16 if dtype == "float16" else np.float32
        self._prelude = ("enable f16;\nalias ST = f16;\nalias ST4 = vec4<f16>;\n" if dtype == "float16"
                         else "alias ST = f32;\nalias ST4 = vec4<f32>;\n")
        U = wgpu.BufferUsage
        self._U = U
        # UNIFORM: the linear kernel binds its input activation as a uniform buffer (see linear.wgsl).
        self._act_usage = U.STORAGE | U.UNIFORM | U.COPY_SRC | U.COPY_DST
        self._tex_format = "rgba16float" if dtype == "float16" else "rgba32float"
        self._pipelines: dict[str, Any] = {}
        self._bind_groups: dict[tuple, Any] = {}
        self._params: dict[bytes, Any] = {}
        self._pool: dict[str, list[Any]] = {}
        self._pool_next: dict[str, int] = {}
        self.n_buffers = 0  # GPU buffers created so far (tests check decode steps add none)
        self.cfg: ModelConfig | None = None
        self.kv: list[tuple[Any, Any]] = []  # per layer (K view, V view)
        self._kv_tex: list[tuple[Any, Any]] = []
        self._kv_seg = self._kv_nseg = 1
        self.kv_batch = self.kv_ctx = 0
        self._cos = self._sin = None
        self._dummy = self._buffer(16, U.STORAGE | U.COPY_SRC)
        # Dynamic host inputs (token ids, positions), rewritten between steps only.
        self._ids_buf = self._buffer(256, U.STORAGE | U.COPY_DST)
        self._pos_buf = self._buffer(256, U.STORAGE | U.COPY_DST)
        self._pos_host: np.ndarray | None = None
        self._used_dynamic: set[str] = set()  # dynamic buffers referenced by unsubmitted commands
        # Encoding and timing state of the current step.
        self._enc = None
        self._pass = None
        self._query_sets: list[Any] = []
        self._n_timed = 0
        self._pending: list[tuple[int, int, int, int, int, int]] = []  # name_id, class, layer, m, n, k
        self._first_submit_ns: int | None = None
        self._resolve_buf = None
        self._readback = None
        self._readback_size = 0
        self._hook_end_step(recorder)
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

    # -- device plumbing ------------------------------------------------------------------------
    def _timestamp_period(self) -> float:
        """ns per timestamp tick; 1.0 on lavapipe, other values on e.g. some Vulkan/D3D drivers."""
        try:
            period = float(self._extras.lib.wgpuQueueGetTimestampPeriod(self.device.queue._internal))
        except Exception:
            return 1.0
        return period if period > 0 and math.isfinite(period) else 1.0

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

    def _hook_end_step(self, recorder: KernelRecorder) -> None:
        # Timings of a step must reach the recorder before it closes the step; sampling already
        # flushes, this covers steps that end without a sync point.
        original = recorder.end_step

        def end_step(pending: Any = None) -> None:
            self._flush()
            original(pending)

        recorder.end_step = end_step  # type: ignore[method-assign]

    def _buffer(self, size: int, usage: Any, data: np.ndarray | None = None) -> Any:
        self.n_buffers += 1
        if data is not None:
            return self.device.create_buffer_with_data(data=np.ascontiguousarray(data), usage=usage)
        return self.device.create_buffer(size=max(16, (size + 3) // 4 * 4), usage=usage)

    def _pipeline(self, name: str, **consts: int | str) -> Any:
        key = name + "".join(f":{k}={v}" for k, v in sorted(consts.items()))
        pl = self._pipelines.get(key)
        if pl is None:
            src = resources.files("llmtop.kernels").joinpath("wgsl", f"{name}.wgsl").read_text()
            if "MB" in consts:
                counts = {"r": int(consts["MB"]), "j": int(consts["RPT"]), "u": int(consts["U"])}
                src = _unroll_tile(src, counts)
            for k, v in consts.items():
                src = src.replace("{{" + k + "}}", str(v))
            if SHADER_HOOK is not None:
                src = SHADER_HOOK(name, src)
            module = self.device.create_shader_module(label=name, code=self._prelude + src)
            pl = self.device.create_compute_pipeline(
                label=name, layout="auto", compute={"module": module, "entry_point": "main"})
            self._pipelines[key] = pl
        return pl

    def _x_window(self) -> dict[str, int | str]:
        """linear.wgsl's uniform X window: vec4 words of f32, or of packed f16 pairs."""
        if self._esize == 2:
            return {"XN": _UNIFORM_MAX // 16, "XU": "vec4<u32>",
                    "XLOAD": "let v = X[i >> 1u]; let h = select(v.xy, v.zw, (i & 1u) == 1u); "
                             "return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));"}
        return {"XN": _UNIFORM_MAX // 16, "XU": "vec4<f32>", "XLOAD": "return X[i];"}

    def _linear_pipeline(self, **consts: int | str) -> Any:
        """linear.wgsl with the weight read path in effect; "auto" settles it on first use."""
        reads = {"storage": (f"texture_storage_2d<{self._tex_format}, read>", "textureLoad(W, c)"),
                 "sampled": ("texture_2d<f32>", "textureLoad(W, c, 0)")}
        if self.weight_read == "auto":
            decl, load = reads["storage"]
            try:
                pl = self._pipeline("linear", WDECL=decl, WLOAD=load, **consts)
            except Exception as e:  # wgpu raises its own error types for a refused shader
                self.weight_read = "sampled"
                self.weight_read_note = f"read-only storage textures refused ({type(e).__name__}: {e})"[:200]
            else:
                self.weight_read = "storage"
                return pl
        decl, load = reads[self.weight_read]
        return self._pipeline("linear", WDECL=decl, WLOAD=load, **consts)

    def _bind(self, pl: Any, bufs: tuple[Any, ...]) -> Any:
        """Bind group of `bufs`: buffers (whole), (buffer, offset, size) ranges, or texture views."""
        key = (id(pl), *bufs)
        bg = self._bind_groups.get(key)
        if bg is None:
            entries = []
            for i, b in enumerate(bufs):
                if isinstance(b, tuple):
                    res: Any = {"buffer": b[0], "offset": b[1], "size": b[2]}
                elif isinstance(b, self._wgpu.GPUTextureView):
                    res = b
                else:
                    res = {"buffer": b, "offset": 0, "size": b.size}
                entries.append({"binding": i, "resource": res})
            bg = self.device.create_bind_group(layout=pl.get_bind_group_layout(0), entries=entries)
            self._bind_groups[key] = bg
        return bg

    def _param(self, fmt: str, *vals: Any) -> Any:
        """Immutable uniform buffer holding `vals` (cached by content, so never rewritten in flight)."""
        raw = struct.pack("<" + fmt, *vals)
        raw += b"\0" * (-len(raw) % 16)
        buf = self._params.get(raw)
        if buf is None:
            buf = self._buffer(len(raw), self._U.UNIFORM, np.frombuffer(raw, np.uint8))
            self._params[raw] = buf
        return buf

    def _out(self, name: str, shape: tuple[int, ...], avoid: tuple[Any, ...] = (),
             esize: int | None = None) -> WTensor:
        """Output buffer for op `name`: alternates between two pooled buffers that grow by powers of two,
        so an op's result stays valid until the same op has run twice more."""
        nbytes = int(np.prod(shape)) * (esize or self._esize)
        slots = self._pool.setdefault(name, [None, None])
        i = self._pool_next.get(name, 0)
        if slots[i] is not None and slots[i] in avoid:
            i ^= 1
        buf = slots[i]
        if buf is None or buf.size < nbytes + _UNIFORM_MAX:
            self._submit()  # old buffer may still be referenced by recorded commands; keep them ordered
            # + 64 KiB: any row of an activation can start a full uniform window (see `linear`).
            buf = slots[i] = self._buffer(1 << (nbytes + _UNIFORM_MAX - 1).bit_length(), self._act_usage)
            self._bind_groups.clear()  # entries may reference the replaced buffer
        self._pool_next[name] = i ^ 1
        return WTensor(buf, shape)

    def _write_dynamic(self, key: str, buf_attr: str, data: np.ndarray) -> Any:
        """queue.write_buffer lands before the next submit: flush recorded work that reads the old data."""
        if key in self._used_dynamic:
            self._submit()
        buf = getattr(self, buf_attr)
        if buf.size < data.nbytes:
            buf = self._buffer(1 << (data.nbytes - 1).bit_length(), self._U.STORAGE | self._U.COPY_DST)
            setattr(self, buf_attr, buf)
            self._bind_groups.clear()
        self.queue.write_buffer(buf, 0, np.ascontiguousarray(data))
        return buf

    def _set_positions(self, positions: np.ndarray) -> Any:
        pos = np.ascontiguousarray(positions, dtype=np.int32).reshape(-1)
        if self._pos_host is None or not np.array_equal(pos, self._pos_host):
            if self.kv_ctx and (pos.min(initial=0) < 0 or pos.max(initial=0) >= self.kv_ctx):
                raise LlmtopError(f"position {int(pos.max())} outside the KV cache "
                                  f"(max context {self.kv_ctx})")
            self._write_dynamic("pos", "_pos_buf", pos)
            self._pos_host = pos.copy()
        self._used_dynamic.add("pos")
        return self._pos_buf

    # -- encoding and timing --------------------------------------------------------------------
    def _encoder(self) -> Any:
        if self._enc is None:
            self._enc = self.device.create_command_encoder()
        return self._enc

    def _close_pass(self) -> None:
        if self._pass is not None:
            self._pass.end()
            self._pass = None

    def _query_slot(self) -> tuple[Any, int]:
        i = self._n_timed
        set_i, slot = divmod(2 * i, _QUERIES_PER_SET)
        while set_i >= len(self._query_sets):
            self._query_sets.append(self.device.create_query_set(type="timestamp", count=_QUERIES_PER_SET))
        return self._query_sets[set_i], slot

    def _run(self, dispatches: list[tuple[Any, tuple[Any, ...], int, int]], name: str, layer: int,
             m: int = 0, n: int = 0, k: int = 0) -> None:
        """Encode one op (one or more dispatches) bracketed by one timestamp pair; queue its event row."""
        enc = self._encoder()
        if self.mode == "per-pass":
            qs, slot = self._query_slot()
            cp = enc.begin_compute_pass(timestamp_writes={
                "query_set": qs, "beginning_of_pass_write_index": slot, "end_of_pass_write_index": slot + 1})
        else:
            if self._pass is None:
                self._pass = enc.begin_compute_pass()
            cp = self._pass
            if self.mode == "inside-pass":
                qs, slot = self._query_slot()
                self._extras.write_timestamp(cp, qs, slot)
        for pl, bufs, gx, gy in dispatches:
            cp.set_pipeline(pl)
            cp.set_bind_group(0, self._bind(pl, bufs))
            cp.dispatch_workgroups(gx, gy)
        if self.mode == "per-pass":
            cp.end()
        elif self.mode == "inside-pass":
            self._extras.write_timestamp(cp, qs, slot + 1)
        nid, cls = self.recorder.ids[name]
        self._pending.append((nid, cls, layer, m, n, k))
        self._n_timed += 1

    def _submit(self) -> None:
        if self._enc is None:
            return
        self._close_pass()
        if self._first_submit_ns is None:
            self._first_submit_ns = time.perf_counter_ns()
        self.queue.submit([self._enc.finish()])
        self._enc = None
        self._used_dynamic.clear()

    def _ensure_readback(self, nbytes: int) -> Any:
        if self._readback is None or self._readback_size < nbytes:
            self._readback_size = 1 << max(12, (nbytes - 1).bit_length())
            self._readback = self._buffer(self._readback_size, self._U.MAP_READ | self._U.COPY_DST)
        return self._readback

    def _flush(self, result: WTensor | None = None, result_bytes: int = 0) -> np.ndarray | None:
        """Submit recorded work; resolve this step's timestamps and read back `result` in one map.

        Returns the first `result_bytes` of `result` as uint8, or None without a result.
        """
        n_ts = 2 * self._n_timed if self.mode != "off" else 0
        if self._enc is None and not self._pending and result is None:
            return None
        ts_bytes = n_ts * 8
        res_off = (ts_bytes + 255) // 256 * 256
        if result is None:
            # Nothing to read: map 16 bytes anyway as the completion fence (wgpu-py 0.32's
            # on_submitted_work_done is broken), which also gives the step a t_done.
            result, result_bytes = WTensor(self._dummy, (4,)), 16
        copy_bytes = (result_bytes + 3) // 4 * 4  # copies move whole 4-byte words
        total = (res_off + copy_bytes + 7) // 8 * 8
        enc = self._encoder()
        self._close_pass()
        rb = self._ensure_readback(total)
        if n_ts:
            if self._resolve_buf is None or self._resolve_buf.size < ts_bytes:
                self._resolve_buf = self._buffer(max(ts_bytes, len(self._query_sets) * _QUERIES_PER_SET * 8),
                                                 self._U.QUERY_RESOLVE | self._U.COPY_SRC)
            for si, qs in enumerate(self._query_sets):
                lo = si * _QUERIES_PER_SET
                cnt = min(n_ts - lo, _QUERIES_PER_SET)
                if cnt <= 0:
                    break
                enc.resolve_query_set(qs, 0, cnt, self._resolve_buf, lo * 8)
            enc.copy_buffer_to_buffer(self._resolve_buf, 0, rb, 0, ts_bytes)
        enc.copy_buffer_to_buffer(result.buf, 0, rb, res_off, copy_bytes)
        t_submit = self._first_submit_ns
        self._submit()
        if t_submit is None:
            t_submit = self._first_submit_ns
        rb.map_sync("read", 0, total)
        t_done = time.perf_counter_ns()
        data = np.frombuffer(rb.read_mapped(0, total, copy=True), np.uint8)
        rb.unmap()
        if n_ts:
            self._emit(data[:ts_bytes].view(np.uint64), t_submit or t_done, t_done)
        out = data[res_off:res_off + result_bytes]
        if not n_ts:
            self._emit(None, t_submit or t_done, t_done)
        self._n_timed = 0
        self._first_submit_ns = None
        return out

    def _emit(self, ticks: np.ndarray | None, t_submit: int, t_done: int) -> None:
        """Convert GPU ticks to host-clock events; anchor the step's first GPU tick after its first submit."""
        rows = self._pending
        self._pending = []
        add = self.recorder.add
        if ticks is None or not rows:
            for nid, cls, layer, m, n, k in rows:
                add(nid, cls, layer, t_submit, 0, m, n, k)
            return
        t = ticks.astype(np.float64)
        begin, end = t[0::2], t[1::2]
        g0 = begin.min()
        span_ns = (end.max() - g0) * self.tick_ns
        # The GPU cannot start before the first submit nor finish after the map completed.
        anchor = min(t_submit, t_done - span_ns)
        starts = (anchor + (begin - g0) * self.tick_ns).astype(np.int64)
        durs = np.maximum((end - begin) * self.tick_ns, 0).astype(np.int64)
        for (nid, cls, layer, m, n, k), s, d in zip(rows, starts.tolist(), durs.tolist(), strict=True):
            add(nid, cls, layer, s, d, m, n, k)

    # -- setup ----------------------------------------------------------------------------------
    def load_weights(self, cfg: ModelConfig, weights: dict[str, np.ndarray]) -> dict[str, Any]:
        for dim in (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim):
            if dim % 4:
                raise LlmtopError(f"wgpu backend needs model dims divisible by 4 (got {dim})")
        self.cfg = cfg
        handles: dict[str, Any] = {}
        U = self._U
        for name, w in weights.items():
            arr = np.ascontiguousarray(w, dtype=self._np_dtype)
            if arr.ndim == 2:
                n_rows, k = arr.shape
                if k % 4:
                    raise LlmtopError(f"wgpu backend: {name} has K={k}, not divisible by 4")
                if k // 4 > self.max_tex:
                    raise LlmtopError(f"wgpu backend: {name} has K={k}, wider than the adapter's texture "
                                      f"limit ({4 * self.max_tex})")
                k4 = k // 4
                TU = self._wgpu.TextureUsage
                g = WEIGHT_GROUP
                while g > 1 and k4 * g > self.max_tex:  # very wide rows: interleave fewer
                    g //= 2
                per = min(self.max_tex * g, max(1, self.max_binding // (k * self._esize)))
                per = max(g, per // g * g)  # chunks start on group boundaries
                texs, chunks = [], []
                for r0 in range(0, n_rows, per):
                    nr = min(per, n_rows - r0)
                    ng = -(-nr // g)
                    part = np.zeros((ng * g, k), self._np_dtype)  # the last group is zero-padded
                    part[:nr] = arr[r0:r0 + nr]
                    part = np.ascontiguousarray(part.reshape(ng, g, k4, 4).transpose(0, 2, 1, 3))
                    # STORAGE_BINDING: linear.wgsl reads it as a read-only storage texture, TEXTURE_BINDING:
                    # the embedding gather samples it.
                    tex = self.device.create_texture(
                        size=(k4 * g, ng, 1), format=self._tex_format,
                        usage=TU.TEXTURE_BINDING | TU.STORAGE_BINDING | TU.COPY_SRC | TU.COPY_DST)
                    self.queue.write_texture({"texture": tex}, part,
                                             {"bytes_per_row": g * k * self._esize, "rows_per_image": ng},
                                             (k4 * g, ng, 1))
                    self.n_buffers += 1
                    texs.append(tex)
                    chunks.append((tex.create_view(), r0, nr))
                handles[name] = WMatrix(chunks, (n_rows, k), texs, g)
            else:
                flat = arr.reshape(-1)
                handles[name] = WTensor(self._buffer(0, U.STORAGE | U.COPY_SRC, flat), flat.shape)
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

    def _texture_to_host(self, tex: Any, rows: int, k: int, layers: int = 1) -> np.ndarray:
        """Read a texture back as float32 (layers, rows, k) (tests); copies need 256-byte row pitches."""
        self._flush()  # recorded work may still write the texture
        row = k * self._esize
        pitch = (row + 255) // 256 * 256
        stage = self.device.create_buffer(size=pitch * rows * layers,
                                          usage=self._U.MAP_READ | self._U.COPY_DST)
        enc = self.device.create_command_encoder()
        enc.copy_texture_to_buffer({"texture": tex}, {"buffer": stage, "bytes_per_row": pitch,
                                                      "rows_per_image": rows}, (k // 4, rows, layers))
        self.queue.submit([enc.finish()])
        stage.map_sync("read")
        raw = np.frombuffer(stage.read_mapped(copy=True), np.uint8).reshape(layers, rows, pitch)[..., :row]
        stage.unmap()
        stage.destroy()
        out = np.ascontiguousarray(raw).view(self._np_dtype).astype(np.float32)
        return out[0] if layers == 1 else out

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
            mb = min(LINEAR_MAX_MB, m - m0, (_UNIFORM_MAX - mis) // row_bytes)
            if mb < 1:
                raise LlmtopError(f"wgpu backend: {name} has K={k}; rows over {_UNIFORM_MAX} bytes do not "
                                  "fit the uniform input window")
            rpt, wg = LINEAR_RPT, LINEAR_WG
            g, k4 = weight.group, k // 4
            unroll = 2 if mb == 1 else LINEAR_PREFILL_UNROLL
            unroll = unroll if k4 % unroll == 0 else 1
            pl = self._linear_pipeline(MB=mb, RPT=rpt, G=g, WG=wg, K4=k4, U=unroll, **self._x_window())
            xr = (x.buf, off, _UNIFORM_MAX)
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
        v = logits.shape[-1]
        rows = logits.numel // v
        greedy = params.temperature <= 0.0
        k = 1 if greedy else params.top_k
        if 0 < k <= TOPK_MAX:
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
            vals = cand[..., 1].copy().view(np.float32).astype(np.float64) / params.temperature
            probs = np.exp(vals - vals.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            return np.array([idx[r, _draw(probs[r], params.top_p, generator)] for r in range(rows)])
        # Full-vocabulary sampling: GPU softmax with temperature, host top-k/top-p and draw.
        out = self._out("sampling", (rows, v), esize=4)
        pl = self._pipeline("softmax")
        prm = self._param("IfII", v, 1.0 / params.temperature, 0, 0)
        self._run([(pl, (logits.buf, out.buf, prm), rows, 1)], "sampling", NO_LAYER)
        raw = self._flush(out, rows * v * 4)
        assert raw is not None
        probs = raw.view(np.float32).reshape(rows, v).astype(np.float64)
        res = []
        for r in range(rows):
            order = np.argsort(-probs[r], kind="stable")
            if params.top_k > 0:
                order = order[:params.top_k]
            p = probs[r][order]
            res.append(int(order[_draw(p / p.sum(), params.top_p, generator)]))
        return np.array(res, dtype=np.int64)


def _draw(probs_desc: np.ndarray, top_p: float, rng: Any) -> int:
    """Index into probabilities sorted descending, after nucleus (top-p) truncation."""
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs_desc), top_p) + 1)
        probs_desc = probs_desc[:max(1, keep)]
        probs_desc = probs_desc / probs_desc.sum()
    u = float(rng.random())
    return int(min(np.searchsorted(np.cumsum(probs_desc), u, side="right"), len(probs_desc) - 1))


def create_wgpu_ops(recorder: KernelRecorder, dtype: str = "float32", adapter: str | None = None) -> WgpuOps:
    """`--backend wgpu` with default options (tests, benchmarks)."""
    return WgpuOps(recorder, dtype, adapter=adapter)


__all__ = ["LINEAR_MAX_MB", "TOPK_MAX", "WMatrix", "WTensor", "WgpuOps", "adapter_label", "create_wgpu_ops",
           "kv_cache_layout", "list_adapters", "rope_inv_freq"]
