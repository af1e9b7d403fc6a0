"""The backend op interface the decode engine calls, and the recorder every op reports to.

Contract (all backends: torch cpu/cuda, wgpu):
- Each timed op call emits exactly one kernel event into `self.recorder` with the names and
  op classes listed in KERNEL_NAMES, so every pane is identical across backends.
- Tensors are opaque handles owned by the backend; the engine never looks inside them except
  through `to_host`. Shapes are given in the docstrings as (B, T, D): batch, tokens in this
  step, feature width.
- `positions` is an int32 host array (B, T): the absolute position of each token. `kv_write`
  stores k/v at those cache slots, and `attention` lets the query at position p see cache slots
  0..p of its own sequence (causal by position). Prompts in a batch are right-padded: padded
  slots beyond a sequence's real length are overwritten by its later decode tokens before any
  query can see them, so no extra length mask is needed.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmtop.events import (
    KERNEL_DTYPE,
    NO_LAYER,
    OP_CLASS_ID,
    STEP_DTYPE,
    EventBatch,
    NameTable,
)
from llmtop.model.config import ModelConfig

# name -> op class. Linear names are "matmul:<proj>" for proj in LINEAR_NAMES.
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
KERNEL_NAMES: dict[str, str] = {
    "embedding": "embedding",
    "rmsnorm:attn_norm": "norm",
    "rmsnorm:ffn_norm": "norm",
    "rmsnorm:final_norm": "norm",
    **{f"matmul:{p}": "matmul" for p in LINEAR_NAMES},
    "rope": "rope",
    "memcpy:kv_write": "memcpy",
    "attention:prefill": "attention",
    "attention:decode": "attention",
    "silu_mul": "elementwise",
    "add:attn_residual": "elementwise",
    "add:ffn_residual": "elementwise",
    "sampling": "sampling",
}


# Finished steps kept for the drain (~50 ms apart in live runs): far more than a slow drain needs, and a
# bound when nothing drains at all (a 30-layer op-level step is ~40 KB of rows).
MAX_PENDING_STEPS = 2048


@dataclass(slots=True, frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None


class KernelRecorder:
    """Collects one step's kernel rows on the engine thread; hands finished steps to a reader.

    Hot path: `add` appends one tuple. Conversion to numpy happens in `drain`, which the
    collector thread calls. Backends whose timings arrive late (CUDA events, GPU timestamps)
    push rows with `add` once resolved, or override `_resolve` to finish pending steps lazily.
    """

    def __init__(self, names: NameTable | None = None, enabled: bool = True, track: int = 0) -> None:
        self.names = names if names is not None else NameTable()
        self.enabled = enabled
        self.track = track
        # The open step's rows, in `add`'s tuple layout. Hot-path backends append to it directly
        # to save a Python call per op (see TorchOps); nothing else may touch it.
        self.rows: list[tuple] = []
        self._step_meta: tuple[int, int, int, int, int] | None = None  # phase, step, tokens, batch, ctx
        self._step_t0 = 0
        self._done: deque[tuple[tuple, list[tuple], int, int, Any]] = deque()
        self.max_pending = MAX_PENDING_STEPS
        self.backlog_dropped = 0  # finished steps dropped unread because the backlog was full ...
        self.backlog_dropped_rows = 0  # ... and their kernel rows
        self._names_sent = 0
        self.ids: dict[str, tuple[int, int]] = {
            n: (self.names.intern(n), OP_CLASS_ID[c]) for n, c in KERNEL_NAMES.items()
        }

    def kernel_id(self, name: str, op_class: str) -> tuple[int, int]:
        """(name id, op class id) for a name outside KERNEL_NAMES (importers, agents)."""
        ids = self.ids.get(name)
        if ids is None:
            ids = self.ids[name] = (self.names.intern(name), OP_CLASS_ID[op_class])
        return ids

    @property
    def in_step(self) -> bool:
        """Whether a step is open (between begin_step and end_step)."""
        return self._step_meta is not None

    # -- engine thread -------------------------------------------------------------------
    def begin_step(self, phase: int, step: int, tokens: int, batch: int, ctx: int) -> None:
        self.rows = []
        self._step_meta = (phase, step, tokens, batch, ctx)
        self._step_t0 = time.perf_counter_ns()

    def add(self, name_id: int, op_class: int, layer: int, start_ns: int, dur_ns: int,
            m: int = 0, n: int = 0, k: int = 0) -> None:
        self.rows.append((name_id, op_class, layer, start_ns, dur_ns, m, n, k))

    def end_step(self, pending: Any = None) -> None:
        """Close the step. `pending` is backend state still needed to resolve its timings."""
        wall = time.perf_counter_ns() - self._step_t0
        assert self._step_meta is not None, "end_step without begin_step"
        if len(self._done) >= self.max_pending and self._pending_droppable():
            # nobody drains (serve --agent off) or the drain fell far behind: keep memory bounded
            self.backlog_dropped_rows += len(self._done.popleft()[1])
            self.backlog_dropped += 1
        self._done.append((self._step_meta, self.rows, self._step_t0, wall, pending))
        self.rows = []
        self._step_meta = None

    def push_step(self, meta: tuple[int, int, int, int, int], rows: list[tuple], t0_ns: int,
                  wall_ns: int) -> None:
        """Hand over a step whose bounds were decided after its kernels ran (the agent's XRT step inference):
        meta = (phase, step, tokens, batch, ctx), rows in `add`'s layout. A step number of -1 means rows
        outside every step: they drain as kernels with step -1 and no step record."""
        if len(self._done) >= self.max_pending and self._pending_droppable():
            self.backlog_dropped_rows += len(self._done.popleft()[1])
            self.backlog_dropped += 1
        self._done.append((meta, rows, t0_ns, wall_ns, None))

    def discard(self) -> None:
        """Drop every finished step (untimed warm-up rounds) and rewind the name table, so the next drain
        starts over as the first one did: its batch carries every name from 0."""
        self.drain()
        self._done.clear()
        self._names_sent = 0

    def _pending_droppable(self) -> bool:
        """Whether the oldest finished step may be dropped unread (a backend whose pending steps hold
        pooled resources, CUDA events, says no and bounds itself)."""
        return True

    # -- collector thread ----------------------------------------------------------------
    def _resolve(self, rows: list[tuple], pending: Any) -> list[tuple] | None:
        """Return the finished rows of a step, or None if its timings are not ready yet."""
        return rows

    def drain(self) -> EventBatch | None:
        """All finished steps as one batch (oldest first); None when there is nothing new."""
        kernel_parts: list[np.ndarray] = []
        steps: list[tuple] = []
        while self._done:
            meta, rows, t0, wall, pending = self._done[0]
            rows = self._resolve(rows, pending)
            if rows is None:
                break  # keep order: later steps wait for this one
            self._done.popleft()
            phase, step, tokens, batch, ctx = meta
            k = np.zeros(len(rows), dtype=KERNEL_DTYPE)
            if rows:
                cols = list(zip(*rows, strict=True))
                k["name"], k["op_class"], k["layer"] = cols[0], cols[1], cols[2]
                k["start_ns"], k["dur_ns"] = cols[3], cols[4]
                k["m"], k["n"], k["k"] = cols[5], cols[6], cols[7]
            k["phase"], k["step"], k["batch"], k["ctx"], k["track"] = phase, step, batch, ctx, self.track
            kernel_ns = int(k["dur_ns"].sum()) if self.enabled else -1
            if step >= 0:  # push_step's rows outside every step have no step record
                steps.append((phase, self.track, step, tokens, batch, ctx, t0, wall, kernel_ns, 0, 0))
            kernel_parts.append(k)
        if not kernel_parts:
            return None
        base = self._names_sent
        new = self.names.since(base)
        self._names_sent = base + len(new)
        return EventBatch(
            kernels=np.concatenate(kernel_parts) if kernel_parts else np.zeros(0, KERNEL_DTYPE),
            steps=np.array(steps, dtype=STEP_DTYPE),
            names_base=base,
            new_names=list(new),
        )


class Ops(ABC):
    """One backend. Subclasses set `backend`, `device_name`, `timing` and implement the ops."""

    backend: str = ""
    device_name: str = ""
    dtype_name: str = "float32"
    timing: str = ""  # how durations are measured; shown in the UI

    def __init__(self, recorder: KernelRecorder) -> None:
        self.recorder = recorder

    # -- setup (not timed) ---------------------------------------------------------------
    @abstractmethod
    def load_weights(self, cfg: ModelConfig, weights: dict[str, np.ndarray]) -> dict[str, Any]:
        """Upload float32 host weights (HF names, RoPE layout already un-permuted); return handles.

        A host-memory backend may take the arrays over instead of copying them (TorchOps on CPU stores
        some pre-transposed and replaces the dict's entries with equal-valued views), so the caller
        must not rely on the arrays' memory layout afterwards.
        """

    @abstractmethod
    def alloc_kv_cache(self, batch: int, max_ctx: int) -> None:
        """Preallocate K and V for every layer: (batch, n_kv_heads, max_ctx, head_dim)."""

    @abstractmethod
    def to_host(self, x: Any) -> np.ndarray:
        """Copy a handle to a float32 numpy array (tests, logits checks). Not timed."""

    # -- timed ops: one kernel event per call -------------------------------------------
    @abstractmethod
    def embedding(self, ids: np.ndarray, table: Any) -> Any:
        """ids int32 (B, T) -> (B, T, D). Event `embedding`, layer NO_LAYER."""

    @abstractmethod
    def rmsnorm(self, x: Any, weight: Any, eps: float, *, name: str, layer: int) -> Any:
        """(B, T, D) -> (B, T, D). name is one of rmsnorm:attn_norm / ffn_norm / final_norm."""

    @abstractmethod
    def linear(self, x: Any, weight: Any, bias: Any | None, *, name: str, layer: int) -> Any:
        """(B, T, K) @ W(N, K)^T (+ b) -> (B, T, N). name "matmul:<proj>"; m=B*T, n=N, k=K."""

    @abstractmethod
    def rope(self, q: Any, k: Any, positions: np.ndarray, *, layer: int) -> tuple[Any, Any]:
        """Rotate q (B, T, Hq*hd) and k (B, T, Hkv*hd) by position (HF rotate_half layout)."""

    @abstractmethod
    def kv_write(self, k: Any, v: Any, positions: np.ndarray, *, layer: int) -> None:
        """Store k, v (B, T, Hkv*hd) at cache slots `positions`. Event memcpy:kv_write."""

    @abstractmethod
    def attention(self, q: Any, positions: np.ndarray, *, layer: int, phase: int) -> Any:
        """Grouped-query attention of q (B, T, Hq*hd) over this layer's cache, causal by position.

        Event attention:prefill or attention:decode (by phase). Returns (B, T, Hq*hd).
        """

    @abstractmethod
    def silu_mul(self, gate: Any, up: Any, *, layer: int) -> Any:
        """silu(gate) * up. Event silu_mul."""

    @abstractmethod
    def add(self, a: Any, b: Any, *, name: str, layer: int) -> Any:
        """a + b. name add:attn_residual / add:ffn_residual."""

    @abstractmethod
    def last_token(self, x: Any, index: np.ndarray) -> Any:
        """(B, T, D) -> (B, 1, D) picking token index[b] of each row. Not timed (a view/gather)."""

    @abstractmethod
    def sample(self, logits: Any, params: SamplingParams, generator: Any) -> np.ndarray:
        """logits (B, 1, V) -> int64 host array (B,) by the shared spec in kernels/sampling.py, so every
        backend draws the same tokens from the same logits and seed. Event sampling."""

    def make_generator(self, seed: int | None) -> np.random.Generator:
        """The RNG `sample` draws from: numpy's default_rng(seed) on every backend (kernels/sampling.py)."""
        return np.random.default_rng(seed)

    def synchronize(self) -> None:  # noqa: B027 - optional hook; synchronous backends need nothing
        """Wait for queued work (setup and tests only; never inside the decode loop)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources."""

    # -- roofs (kernels/peaks.py) ----------------------------------------------------------
    _peak: dict[str, Any] | None = None

    def device_peak(self) -> dict[str, Any] | None:
        """{bw_gbps, flops_gflops, dtype, source} of this backend's device, found once (a CPU probe is
        cached per machine); None when unknown. What the kernel table's roofline columns divide by."""
        if self._peak is None:
            self._peak = self._find_peak() or {}
        return self._peak or None

    def set_peak(self, peak: dict[str, Any]) -> None:
        """`--peak BW,FLOPS`: the user's roofs instead of the probe's or the table's."""
        self._peak = peak

    def _find_peak(self) -> dict[str, Any] | None:
        return None


__all__ = ["KERNEL_NAMES", "LINEAR_NAMES", "NO_LAYER", "KernelRecorder", "Ops", "SamplingParams"]
