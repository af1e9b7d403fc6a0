"""Mergeable statistics over one set of events (a time slice, the archive, or a merged scope).

Everything here is a sum, a min or a max, so a window is the merge of its live slices and the
cumulative view is the archive (evicted slices folded together) merged with the live slices.
Per-key arrays are indexed by the aggregator's dense key ids, histogram arrays by its dense cell
ids (one cell = one (key, duration bucket) pair; see `buckets.py`).
"""

from __future__ import annotations

import numpy as np

from llmtop.stats.buckets import N_BUCKETS, bucket_index

# Columns of Store.steps (one row per phase).
S_N, S_WALL, S_GEN, S_PROC, S_TIMED_N, S_TIMED_WALL, S_KERNEL, S_HOST, S_OVERLAP, S_CTX = range(10)
# Steps sampled under CUPTI (busy_ns > 0): their count, wall, GPU busy and idle ns, and how many were
# launch-bound (idle > busy).
S_GPU_N, S_GPU_WALL, S_GPU_BUSY, S_GPU_IDLE, S_GPU_LB = range(10, 15)
N_STEP_COLS = 15
# Columns of Store.att (one row per context bucket): moments of x = ctx / 1000, y = attention ms.
A_N, A_X, A_Y, A_XX, A_XY, A_YY, A_X3, A_X4, A_X2Y = range(9)
A_K = 9  # Σ all kernels' ms of those decode steps: attention's share of the step per context bucket
N_ATT_COLS = 10
N_CTX_BUCKETS = 256


def _grow(a: np.ndarray, n: int, fill: float) -> np.ndarray:
    if len(a) >= n:
        return a
    out = np.full(max(n, 2 * len(a), 16), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


class Store:
    """Sums/min/max for a set of events. Arrays grow on demand; never shrink."""

    __slots__ = (
        "att",
        "att_max",
        "att_min",
        "hist",
        "kb",
        "kc",
        "kel",
        "kfl",
        "kmax",
        "kmin",
        "kn",
        "kq",
        "ks",
        "ksh",
        "kshn",
        "ksteps",
        "sp_cnt",
        "sp_idx",
        "step_hist",
        "step_max",
        "step_min",
        "steps",
    )

    def __init__(self) -> None:
        self.kc = np.zeros(0, np.int64)  # events per key
        self.ks = np.zeros(0, np.float64)  # sum of durations (ns; integer-valued, exact below 2**53)
        self.kq = np.zeros(0, np.float64)  # sum of squared durations
        self.kmin = np.zeros(0, np.float64)
        self.kmax = np.zeros(0, np.float64)
        # Roofline inputs of the events with a matmul shape (m, n, k): elements moved (n k weights + m k in +
        # m n out; bytes once the dtype is known), flops (2 m n k), their durations and count.
        self.kel = np.zeros(0, np.float64)
        self.kfl = np.zeros(0, np.float64)
        self.ksh = np.zeros(0, np.float64)
        self.kshn = np.zeros(0, np.int64)
        # XRT (npu) events only: sums of their m and n fields: bytes and buffers synced (events.py)
        self.kb = np.zeros(0, np.float64)
        self.kn = np.zeros(0, np.float64)
        self.hist: np.ndarray | None = np.zeros(0, np.int64)  # dense counts per cell, or None if sparse
        self.sp_idx = np.zeros(0, np.int64)  # sparse form: cell ids with counts
        self.sp_cnt = np.zeros(0, np.int64)
        self.ksteps = np.zeros(2, np.int64)  # (track, step) runs with kernel events, per phase
        self.steps = np.zeros((2, N_STEP_COLS), np.float64)
        self.step_hist = np.zeros((2, N_BUCKETS), np.int64)
        self.step_min = np.full(2, np.inf)
        self.step_max = np.full(2, -np.inf)
        self.att = np.zeros((N_CTX_BUCKETS, N_ATT_COLS), np.float64)
        self.att_min = np.full(N_CTX_BUCKETS, np.inf)  # min / max context (tokens) per bucket
        self.att_max = np.full(N_CTX_BUCKETS, -np.inf)

    # -- growth / representation ------------------------------------------------------------
    def ensure_keys(self, n: int) -> None:
        if len(self.kc) < n:
            self.kc = _grow(self.kc, n, 0)
            self.ks = _grow(self.ks, n, 0.0)
            self.kq = _grow(self.kq, n, 0.0)
            self.kmin = _grow(self.kmin, n, np.inf)
            self.kmax = _grow(self.kmax, n, -np.inf)
            self.kel = _grow(self.kel, n, 0.0)
            self.kfl = _grow(self.kfl, n, 0.0)
            self.ksh = _grow(self.ksh, n, 0.0)
            self.kshn = _grow(self.kshn, n, 0)
            self.kb = _grow(self.kb, n, 0.0)
            self.kn = _grow(self.kn, n, 0.0)

    def dense(self, n_cells: int) -> np.ndarray:
        """The histogram as a dense array of at least n_cells (converting from sparse if needed)."""
        if self.hist is None:
            h = np.zeros(max(n_cells, 16), np.int64)
            h[self.sp_idx] = self.sp_cnt
            self.hist = h
            self.sp_idx = self.sp_cnt = np.zeros(0, np.int64)
        elif len(self.hist) < n_cells:
            self.hist = _grow(self.hist, n_cells, 0)
        return self.hist

    def freeze(self) -> None:
        """Switch the histogram to sparse form (a slice that no longer receives most events)."""
        if self.hist is not None:
            idx = np.flatnonzero(self.hist)
            self.sp_idx, self.sp_cnt = idx, self.hist[idx]
            self.hist = None

    def hist_into(self, out: np.ndarray) -> None:
        if self.hist is not None:
            n = min(len(self.hist), len(out))
            out[:n] += self.hist[:n]
        elif len(self.sp_idx):
            out[self.sp_idx] += self.sp_cnt  # ids are unique within one store

    def is_empty(self) -> bool:
        return not (self.kc.any() or self.steps[:, S_N].any() or self.att[:, A_N].any())

    # -- adding events ------------------------------------------------------------------------
    def add_kernels(self, kid: np.ndarray, cell: np.ndarray, d: np.ndarray, n_keys: int,
                    n_cells: int) -> None:
        self.ensure_keys(n_keys)
        h = self.dense(n_cells)
        np.add.at(h, cell, 1)
        m = len(self.kc)
        self.kc += np.bincount(kid, minlength=m)
        self.ks += np.bincount(kid, weights=d, minlength=m)
        self.kq += np.bincount(kid, weights=d * d, minlength=m)
        np.minimum.at(self.kmin, kid, d)
        np.maximum.at(self.kmax, kid, d)

    def add_bytes(self, kid: np.ndarray, m: np.ndarray, n: np.ndarray, n_keys: int) -> None:
        """XRT events: bytes (m) and buffers (n) synced, summed per key."""
        self.ensure_keys(n_keys)
        size = len(self.kb)
        self.kb += np.bincount(kid, weights=m, minlength=size)
        self.kn += np.bincount(kid, weights=n, minlength=size)

    def add_shaped(self, kid: np.ndarray, elems: np.ndarray, flops: np.ndarray, d: np.ndarray,
                   n_keys: int) -> None:
        """Events with a matmul shape: their elements moved, flops and durations, per key."""
        self.ensure_keys(n_keys)
        m = len(self.kc)
        self.kel += np.bincount(kid, weights=elems, minlength=m)
        self.kfl += np.bincount(kid, weights=flops, minlength=m)
        self.ksh += np.bincount(kid, weights=d, minlength=m)
        self.kshn += np.bincount(kid, minlength=m)

    def add_steps(self, phase: np.ndarray, gen: np.ndarray, proc: np.ndarray, ctx: np.ndarray,
                  wall: np.ndarray, kernel: np.ndarray, busy: np.ndarray | None = None,
                  idle: np.ndarray | None = None) -> None:
        """One row per step; all arrays float64 except phase (0/1). kernel < 0 = step not timed;
        busy > 0 = a step sampled under CUPTI, with its GPU busy and idle ns."""
        for p in (0, 1):
            m = phase == p
            if not m.any():
                continue
            w, kn = wall[m], kernel[m]
            row = self.steps[p]
            row[S_N] += len(w)
            row[S_WALL] += w.sum()
            row[S_GEN] += gen[m].sum()
            row[S_PROC] += proc[m].sum()
            row[S_CTX] = max(row[S_CTX], ctx[m].max())
            t = kn >= 0
            if t.any():
                wt, kt = w[t], kn[t]
                row[S_TIMED_N] += len(wt)
                row[S_TIMED_WALL] += wt.sum()
                row[S_KERNEL] += kt.sum()
                diff = wt - kt
                row[S_HOST] += diff[diff > 0].sum()  # host / other time, clamped at zero per step
                row[S_OVERLAP] -= diff[diff < 0].sum()  # kernels longer than the step (multi-stream)
            if busy is not None and idle is not None:
                b, i = busy[m], idle[m]
                g = b > 0
                if g.any():
                    row[S_GPU_N] += int(g.sum())
                    row[S_GPU_WALL] += w[g].sum()
                    row[S_GPU_BUSY] += b[g].sum()
                    row[S_GPU_IDLE] += i[g].sum()
                    row[S_GPU_LB] += int((i[g] > b[g]).sum())
            np.add.at(self.step_hist[p], bucket_index(w), 1)
            self.step_min[p] = min(self.step_min[p], w.min())
            self.step_max[p] = max(self.step_max[p], w.max())

    def add_attention(self, ctx: np.ndarray, y_ms: np.ndarray, width: int,
                      k_ms: np.ndarray | None = None) -> None:
        """Decode steps: context length (tokens), attention-class ms of the whole step and (k_ms) all its
        kernels' ms."""
        if k_ms is None:
            k_ms = np.zeros(len(ctx))
        if len(ctx) <= 4:  # the usual case (a few steps per batch): plain Python beats 12 numpy calls
            for c_, y_, k_ in zip(ctx.tolist(), np.asarray(y_ms, np.float64).tolist(),
                                  np.asarray(k_ms, np.float64).tolist(), strict=True):
                bi = min(c_ // width, N_CTX_BUCKETS - 1)
                x_ = c_ / 1000.0
                x2 = x_ * x_
                row = self.att[bi]
                row += (1.0, x_, y_, x2, x_ * y_, y_ * y_, x2 * x_, x2 * x2, x2 * y_, k_)
                self.att_min[bi] = min(self.att_min[bi], c_)
                self.att_max[bi] = max(self.att_max[bi], c_)
            return
        b = np.minimum(ctx // width, N_CTX_BUCKETS - 1).astype(np.int64)
        x = ctx.astype(np.float64) / 1000.0
        y = np.asarray(y_ms, np.float64)
        x2 = x * x
        cols = np.stack([np.ones_like(x), x, y, x2, x * y, y * y, x2 * x, x2 * x2, x2 * y,
                         np.asarray(k_ms, np.float64)], axis=1)
        np.add.at(self.att, b, cols)  # column order = A_N .. A_X2Y, A_K
        c = ctx.astype(np.float64)
        np.minimum.at(self.att_min, b, c)
        np.maximum.at(self.att_max, b, c)

    def rebin_attention(self) -> None:
        """Context buckets doubled in width: merge neighbour pairs."""
        half = N_CTX_BUCKETS // 2
        att = np.zeros_like(self.att)
        att[:half] = self.att.reshape(half, 2, N_ATT_COLS).sum(axis=1)
        self.att = att
        mn = np.full(N_CTX_BUCKETS, np.inf)
        mx = np.full(N_CTX_BUCKETS, -np.inf)
        mn[:half] = self.att_min.reshape(half, 2).min(axis=1)
        mx[:half] = self.att_max.reshape(half, 2).max(axis=1)
        self.att_min, self.att_max = mn, mx

    # -- merging ------------------------------------------------------------------------------
    def merge_from(self, o: Store, n_keys: int, n_cells: int) -> None:
        self.ensure_keys(max(n_keys, len(o.kc)))
        m = len(o.kc)
        self.kc[:m] += o.kc
        self.ks[:m] += o.ks
        self.kq[:m] += o.kq
        np.minimum(self.kmin[:m], o.kmin, out=self.kmin[:m])
        np.maximum(self.kmax[:m], o.kmax, out=self.kmax[:m])
        self.kel[:m] += o.kel
        self.kfl[:m] += o.kfl
        self.ksh[:m] += o.ksh
        self.kshn[:m] += o.kshn
        self.kb[:m] += o.kb
        self.kn[:m] += o.kn
        o.hist_into(self.dense(n_cells))
        self.ksteps += o.ksteps
        ctx = np.maximum(self.steps[:, S_CTX], o.steps[:, S_CTX])
        self.steps += o.steps
        self.steps[:, S_CTX] = ctx
        self.step_hist += o.step_hist
        np.minimum(self.step_min, o.step_min, out=self.step_min)
        np.maximum(self.step_max, o.step_max, out=self.step_max)
        self.att += o.att
        np.minimum(self.att_min, o.att_min, out=self.att_min)
        np.maximum(self.att_max, o.att_max, out=self.att_max)

    def copy(self) -> Store:
        out = Store.__new__(Store)
        for name in Store.__slots__:
            v = getattr(self, name)
            setattr(out, name, None if v is None else v.copy())
        return out

    @classmethod
    def merged(cls, stores: list[Store], n_keys: int, n_cells: int) -> Store:
        out = cls()
        out.ensure_keys(n_keys)
        out.dense(n_cells)
        for s in stores:
            out.merge_from(s, n_keys, n_cells)
        return out
