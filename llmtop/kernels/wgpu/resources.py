"""GPU memory and compiled state of the wgpu backend: activation buffer pools, the uniform parameter cache,
bind groups, weight textures, pipelines (WGSL from llmtop/kernels/wgsl/) and texture readback.

A decode step allocates no GPU memory: activations come from a per-op-name pool of two buffers that grow
to a power of two, uniform parameter buffers are cached by content and bind groups by their buffers.
2-D weights are textures (one texel = 4 values; see linear.wgsl for why) that interleave G = WEIGHT_GROUP
rows texel by texel (texel (i*G + l, g) = W[g*G + l, 4i..4i+3]) so the 8 SIMD lanes of a lavapipe gather
read contiguous memory, split into row chunks within the texture-dimension and storage-binding limits.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError

WEIGHT_GROUP = 8  # weight rows interleaved per texture row: lavapipe's SIMD width with 256-bit vectors
WEIGHT_READS = ("auto", "storage", "sampled")
UNIFORM_MAX = 65536  # WebGPU's guaranteed max-uniform-buffer-binding-size

# Test hook: (kernel name, WGSL source) -> source, applied before every shader is compiled. Tests set it
# to break one kernel on purpose and check that the start-up self-check refuses the adapter.
SHADER_HOOK: Callable[[str, str], str] | None = None


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


class Resources:
    """Mixin of WgpuOps: buffers, textures, pipelines and bind groups on `self.device`."""

    device: Any
    queue: Any
    max_tex: int
    max_binding: int
    kv_ctx: int
    _wgpu: Any
    _submit: Callable[[], None]
    _flush: Callable[..., np.ndarray | None]

    def _init_resources(self, dtype: str, weight_read: str) -> None:
        # How linear.wgsl reads weights: "storage" (read-only storage texture, lavapipe's fast path) or
        # "sampled" (texture_2d + textureLoad, for adapters that refuse read-only storage textures);
        # "auto" tries storage on the first linear and falls back once.
        self.weight_read = weight_read
        self.weight_read_note: str | None = None  # why "auto" fell back to sampled textures
        self._ubo_align = int(self.device.limits.get("min-uniform-buffer-offset-alignment", 256))
        self._esize = 2 if dtype == "float16" else 4
        self._np_dtype = np.float16 if dtype == "float16" else np.float32
        self._prelude = ("enable f16;\nalias ST = f16;\nalias ST4 = vec4<f16>;\n" if dtype == "float16"
                         else "alias ST = f32;\nalias ST4 = vec4<f32>;\n")
        U = self._wgpu.BufferUsage
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
        self._dummy = self._buffer(16, U.STORAGE | U.COPY_SRC)
        # Dynamic host inputs (token ids, positions), rewritten between steps only.
        self._ids_buf = self._buffer(256, U.STORAGE | U.COPY_DST)
        self._pos_buf = self._buffer(256, U.STORAGE | U.COPY_DST)
        self._pos_host: np.ndarray | None = None
        self._used_dynamic: set[str] = set()  # dynamic buffers referenced by unsubmitted commands

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
            return {"XN": UNIFORM_MAX // 16, "XU": "vec4<u32>",
                    "XLOAD": "let v = X[i >> 1u]; let h = select(v.xy, v.zw, (i & 1u) == 1u); "
                             "return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));"}
        return {"XN": UNIFORM_MAX // 16, "XU": "vec4<f32>", "XLOAD": "return X[i];"}

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
        if buf is None or buf.size < nbytes + UNIFORM_MAX:
            self._submit()  # old buffer may still be referenced by recorded commands; keep them ordered
            # + 64 KiB: any row of an activation can start a full uniform window (see `linear`).
            buf = slots[i] = self._buffer(1 << (nbytes + UNIFORM_MAX - 1).bit_length(), self._act_usage)
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

    def _upload_matrix(self, name: str, arr: np.ndarray) -> WMatrix:
        """(N, K) host weight -> row-interleaved texture chunks (see WMatrix)."""
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
        return WMatrix(chunks, (n_rows, k), texs, g)

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


__all__ = ["SHADER_HOOK", "UNIFORM_MAX", "WEIGHT_GROUP", "WEIGHT_READS", "Resources", "WMatrix", "WTensor"]
