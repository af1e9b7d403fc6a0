"""The shared sampling spec (llmtop/kernels/sampling.py): its keep rule and draw in pure numpy, and the same
seeded tokens from the torch CPU and wgpu backends for the same logits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from wgpu_adapters import needs_adapter

from llmtop.kernels import sampling
from llmtop.kernels.base import KernelRecorder, SamplingParams
from llmtop.kernels.torch_backend import TorchOps


class FixedU:
    """A stand-in Generator whose uniforms are given."""

    def __init__(self, *u: float) -> None:
        self.u = list(u)

    def random(self, n: int) -> np.ndarray:
        out, self.u = self.u[:n], self.u[n:]
        return np.array(out)


# Exact binary fractions: every sum and product below is exact, so the boundaries are the spec's own.
PROBS = np.array([[0.125, 0.5, 0.125, 0.25]], dtype=np.float32)  # ranks: 1 (.5), 3 (.25), 0 and 2 (.125)


@pytest.mark.parametrize(("top_p", "kept"), [
    (0.5, {1}),  # the first token alone reaches 0.5 exactly: the nucleus stops there
    (0.5000001, {1, 3}),
    (0.75, {1, 3}),  # .5 + .25 reaches .75 exactly
    (0.7500001, {1, 3, 0}),
    (0.875, {1, 3, 0}),
    (0.8750001, {1, 3, 0, 2}),
    (1.0, {1, 3, 0, 2}),
    (1e-9, {1}),  # the first token always stays
])
def test_keep_rule_at_the_exact_top_p_boundary(top_p: float, kept: set[int]) -> None:
    p = SamplingParams(temperature=1.0, top_p=top_p)
    got = {int(sampling.sample_probs(PROBS, p, FixedU(u))[0]) for u in np.linspace(0, 1, 401, endpoint=False)}
    assert got == kept


def test_inverse_cdf_over_probabilities_sorted_descending() -> None:
    """u walks the ranks 1, 3, 0, 2 (probability desc, ties by id) over half-open intervals [a, b)."""
    p = SamplingParams(temperature=1.0)
    cases = [(0.0, 1), (0.4999999, 1), (0.5, 3), (0.7499999, 3), (0.75, 0), (0.875, 2), (0.9999999, 2)]
    for u, tok in cases:
        assert sampling.sample_probs(PROBS, p, FixedU(u))[0] == tok, u
    # After top-p 0.75 the kept mass (.75) is renormalised: u = 2/3 lands exactly on rank 1's start.
    p = SamplingParams(temperature=1.0, top_p=0.75)
    assert sampling.sample_probs(PROBS, p, FixedU(0.6666)).tolist() == [1]
    assert sampling.sample_probs(PROBS, p, FixedU(0.6667)).tolist() == [3]
    # top-k 2 keeps ranks 1 and 3 (renormalised 2/3 and 1/3)
    p = SamplingParams(temperature=1.0, top_k=2)
    assert sampling.sample_probs(PROBS, p, FixedU(0.66, 0.67)).tolist() == [1]


def test_pick_integer_weights() -> None:
    w = np.array([1 << 39, 1 << 38, 1 << 37, 1 << 37], dtype=np.int64)
    total = int(w.sum())
    assert sampling.pick(w, total, 0.75, 0.99) == 1  # S_2 = .75 T is not < .75 T: two ranks kept
    assert sampling.pick(w, total, 0.76, 0.99) == 2
    assert sampling.pick(w, total, 1.0, 0.5) == 1  # target 2**39 is not < C_0 = 2**39
    assert sampling.pick(w[:2], total, 1.0, 0.9, complete=False) is None  # needs ranks past the prefix
    assert sampling.pick(w[:2], total, 0.6, 0.9, complete=False) == 1  # the prefix already covers 0.6


def test_candidate_path_ties_and_top_k_by_logit() -> None:
    ids = np.array([[4, 9, 2, 7]])
    logits = np.array([[1.0, 3.0, 3.0, 1.0]], dtype=np.float32)  # 9 and 2 tie: 2 ranks first
    p = SamplingParams(temperature=1.0, top_k=3)
    # ranks: 2, 9 (equal weight), then 4 (lower id than 7, which top-k 3 drops)
    assert sampling.sample_candidates(ids, logits, p, FixedU(0.0)).tolist() == [2]
    assert sampling.sample_candidates(ids, logits, p, FixedU(0.5)).tolist() == [9]
    assert sampling.sample_candidates(ids, logits, p, FixedU(0.9999)).tolist() == [4]


@pytest.mark.parametrize("flat", [False, True])
def test_partial_sort_equals_full_sort(monkeypatch, flat: bool) -> None:
    """The full path sorts only the prefix it needs; any prefix length gives the full sort's token."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 5000)) * (0.05 if flat else 4.0)
    logits[0, 100:200] = logits[0, 50]  # tied probabilities: order by id
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
    for top_k, top_p in itertools.product([0, 3, 70, 4000], [1.0, 0.95, 0.3]):
        p = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p)
        monkeypatch.setattr(sampling, "_PREFIX", 1 << 30)
        full = [sampling.sample_probs(probs, p, np.random.default_rng(s)) for s in range(8)]
        monkeypatch.setattr(sampling, "_PREFIX", 2)
        part = [sampling.sample_probs(probs, p, np.random.default_rng(s)) for s in range(8)]
        np.testing.assert_array_equal(np.stack(part), np.stack(full))


def test_uniforms_one_per_row_whatever_the_settings() -> None:
    """Each call takes exactly one uniform per row, so the stream is the same for any top-k/top-p."""
    probs = np.full((3, 10), 0.1, dtype=np.float32)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    sampling.sample_probs(probs, SamplingParams(temperature=1.0, top_p=1e-9), a)
    sampling.sample_probs(probs, SamplingParams(temperature=1.0, top_k=4), b)
    assert a.random() == b.random() == np.random.default_rng(5).random(4)[3]


# -- torch cpu and wgpu agree ---------------------------------------------------------------------------

V = 8192
TEMPS = [0.0, 0.3, 1.0, 1.7]
TOP_K = [0, 1, 7, 64, 65, 300]
TOP_P = [1.0, 0.9, 0.4]


def _logits() -> np.ndarray:
    """(3, 1, V) logits whose distinct values are far apart (0.0015) next to float32 softmax rounding
    (~1e-7), so the two devices' full-vocabulary softmaxes order tokens alike; exact ties test id order."""
    rng = np.random.default_rng(0)
    rows = [rng.permutation(np.linspace(-6.0, 6.0, V)) for _ in range(3)]
    x = np.stack(rows).astype(np.float32)
    x[1, [10, 4000]] = x[1].max() + 1.0  # tie at the maximum: greedy takes 10
    x[2, 500:540] = x[2, 7]  # a block of equal logits
    return x[:, None, :]


@pytest.fixture(scope="module")
def wgpu_ops():
    from llmtop.kernels.wgpu_backend import WgpuOps

    ops = WgpuOps(KernelRecorder())
    yield ops
    ops.close()


@pytest.mark.wgpu
@needs_adapter
def test_torch_cpu_and_wgpu_draw_the_same_tokens(wgpu_ops) -> None:
    logits = _logits()
    t_ops = TorchOps(KernelRecorder(), device="cpu")
    t_logits = torch.from_numpy(logits)
    w_logits = wgpu_ops.upload(logits, "logits")
    assert t_ops.sample(t_logits, SamplingParams(), None).tolist()[1] == 10
    for temp, top_k, top_p in itertools.product(TEMPS, TOP_K, TOP_P):
        p = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p)
        for seed in (0, 1, 2):
            tg, wg = t_ops.make_generator(seed), wgpu_ops.make_generator(seed)
            t = np.stack([t_ops.sample(t_logits, p, tg) for _ in range(2)])
            w = np.stack([wgpu_ops.sample(w_logits, p, wg) for _ in range(2)])
            assert t.dtype == w.dtype == np.int64
            np.testing.assert_array_equal(t, w, err_msg=str(p))
            if temp == 0.0:
                np.testing.assert_array_equal(t[0], logits[:, 0].argmax(-1))
                break  # greedy ignores the seed
