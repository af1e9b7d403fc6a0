"""Interning tables of the aggregator: (name, layer, phase) -> key id, (key, duration bucket) -> cell id.

Statistics are arrays indexed by key or cell id, so ingesting a batch needs the ids of all its rows at
once: two table gathers per batch, with Python only over the new ids (few per batch). Keys live in a
(name, layer slot, phase) table that grows by doubling; cells in pages of PAGE buckets per key, so a key
that only ever sees a narrow band of durations holds a few pages, not all N_BUCKETS. Ids are never
reused: a reset of the statistics keeps these tables (later batches refer to the same names).
"""

from __future__ import annotations

import numpy as np

from llmtop.stats.buckets import N_PAGES, PAGE, PAGE_BITS


class CellIndex:
    """The key and cell id tables; `nk`/`nc` ids are in use, `k_*`/`c_*` describe each id."""

    def __init__(self) -> None:
        self.lslot = np.full(65536, -1, np.int64)  # layer + 32768 -> layer slot
        self.slot_layer: list[int] = []
        self.keytab = np.full((0, 0, 2), -1, np.int64)  # (name, layer slot, phase) -> key id
        self.nk = 0
        self.k_name = np.zeros(0, np.int64)
        self.k_layer = np.zeros(0, np.int64)
        self.k_phase = np.zeros(0, np.int64)
        self.k_opc = np.zeros(0, np.int64)
        self.pagetab = np.full((0, N_PAGES), -1, np.int64)  # (key, page) -> page id
        self.npages = 0
        self.pool = np.zeros(0, np.int64)  # page id * PAGE + bucket in page -> cell id
        self.page_key = np.zeros(0, np.int64)
        self.page_base = np.zeros(0, np.int64)
        self.nc = 0
        self.c_key = np.zeros(0, np.int64)
        self.c_bucket = np.zeros(0, np.int64)

    def key_ids(self, name: np.ndarray, layer: np.ndarray, phase: np.ndarray, opc: np.ndarray,
                n_names: int) -> np.ndarray:
        """Key id of every (name, layer, phase) row, interning new ones (opc: their op class)."""
        li = layer + 32768
        slot = self.lslot[li]
        if np.count_nonzero(slot < 0):
            for lv in np.unique(li[slot < 0]).tolist():
                self.lslot[lv] = len(self.slot_layer)
                self.slot_layer.append(lv - 32768)
            slot = self.lslot[li]
        kt = self.keytab
        nn, ns = n_names, len(self.slot_layer)
        if kt.shape[0] < nn or kt.shape[1] < ns:
            shape = (max(nn, 2 * kt.shape[0]) if kt.shape[0] < nn else kt.shape[0],
                     max(ns, 2 * kt.shape[1]) if kt.shape[1] < ns else kt.shape[1], 2)
            new = np.full(shape, -1, np.int64)
            new[: kt.shape[0], : kt.shape[1]] = kt
            self.keytab = kt = new
        flat = (name * kt.shape[1] + slot) * 2 + phase
        kid = kt.reshape(-1)[flat]
        miss = kid < 0
        if np.count_nonzero(miss):
            idx = np.flatnonzero(miss)
            u, first = np.unique(flat[idx], return_index=True)
            flat_tab = kt.reshape(-1)
            for f, j in zip(u.tolist(), idx[first].tolist(), strict=True):
                flat_tab[f] = self._new_key(int(name[j]), self.slot_layer[int(slot[j])], int(phase[j]),
                                            int(opc[j]))
            kid = flat_tab[flat]
        return kid

    def _new_key(self, name: int, layer: int, phase: int, opc: int) -> int:
        k = self.nk
        if k >= len(self.k_name):
            cap = max(64, 2 * k)
            for attr in ("k_name", "k_layer", "k_phase", "k_opc"):
                a = np.zeros(cap, np.int64)
                a[:k] = getattr(self, attr)[:k]
                setattr(self, attr, a)
            pt = np.full((cap, N_PAGES), -1, np.int64)
            pt[: len(self.pagetab)] = self.pagetab
            self.pagetab = pt
        self.k_name[k], self.k_layer[k], self.k_phase[k], self.k_opc[k] = name, layer, phase, opc
        self.nk = k + 1
        return k

    def cell_ids(self, kid: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cell id of every (key, duration bucket) pair, interning new ones (pages of PAGE buckets)."""
        pflat = kid * N_PAGES + (b >> PAGE_BITS)
        pg = self.pagetab.reshape(-1)[pflat]
        if np.count_nonzero(pg < 0):
            u = np.unique(pflat[pg < 0])
            p0, n = self.npages, len(u)
            self.pagetab.reshape(-1)[u] = np.arange(p0, p0 + n)
            self.npages = p0 + n
            if self.npages > len(self.page_key):
                cap = max(64, 2 * self.npages)
                pool = np.full(cap * PAGE, -1, np.int64)
                pool[: len(self.pool)] = self.pool
                self.pool = pool
                for attr in ("page_key", "page_base"):
                    a = np.zeros(cap, np.int64)
                    a[:p0] = getattr(self, attr)[:p0]
                    setattr(self, attr, a)
            self.page_key[p0 : p0 + n] = u // N_PAGES
            self.page_base[p0 : p0 + n] = (u % N_PAGES) * PAGE
            pg = self.pagetab.reshape(-1)[pflat]
        slot = pg * PAGE + (b & (PAGE - 1))
        cell = self.pool[slot]
        if np.count_nonzero(cell < 0):
            u = np.unique(slot[cell < 0])
            c0, n = self.nc, len(u)
            if c0 + n > len(self.c_key):
                cap = max(1024, 2 * (c0 + n))
                for attr in ("c_key", "c_bucket"):
                    a = np.zeros(cap, np.int64)
                    a[:c0] = getattr(self, attr)[:c0]
                    setattr(self, attr, a)
            ids = np.arange(c0, c0 + n)
            self.pool[u] = ids
            p = u >> PAGE_BITS
            self.c_key[ids] = self.page_key[p]
            self.c_bucket[ids] = self.page_base[p] + (u & (PAGE - 1))
            self.nc = c0 + n
            cell = self.pool[slot]
        return cell


__all__ = ["CellIndex"]
