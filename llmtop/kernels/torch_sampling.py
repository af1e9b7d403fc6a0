"""Sampling on the torch backend: the device half in torch, the rest by the shared spec (kernels/sampling.py).

`sample_device` launches what runs on the logits' device (argmax, top-k candidates, or the temperature
softmax) and `sample_finish` copies the result to the host and draws there; the CUDA timing wraps only the
first in its event pair. Seeded tokens equal the wgpu backend's for the same logits (tests/test_sampling.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from llmtop.kernels import sampling
from llmtop.kernels.base import SamplingParams


def sample_device(last: torch.Tensor, params: SamplingParams) -> tuple[str, tuple[torch.Tensor, ...]]:
    """(B, V) logits -> (path, device tensors): ("greedy", argmax), ("candidates", (ids, logits, ties)),
    or ("probs", float32 softmax of logits * float32(1 / temperature))."""
    if params.temperature <= 0.0:
        return "greedy", (torch.argmax(last, dim=-1),)  # first maximal index, like the spec
    k = sampling.candidate_count(params, last.shape[-1])
    if k:
        vals, idx = torch.topk(last, k, dim=-1)
        kth = vals[:, -1:]
        # torch.topk keeps an unspecified subset of the logits tied at the k-th value; the spec keeps the
        # lowest ids. Rows with ties outside the returned k get their candidates fixed on the host.
        ties = (last == kth).sum(-1) > (vals == kth).sum(-1)
        return "candidates", (idx, vals, ties)
    inv_temp = float(np.float32(1.0 / params.temperature))  # the f32 multiplier the wgpu shader uses
    return "probs", (torch.softmax(last.float() * inv_temp, dim=-1),)


def sample_finish(last: torch.Tensor, dev: tuple[str, tuple[torch.Tensor, ...]], params: SamplingParams,
                  generator: Any) -> np.ndarray:
    """Host half: copy `sample_device`'s result back and draw by the spec. -> (B,) int64."""
    path, out = dev
    if path == "greedy":
        return out[0].cpu().numpy()
    if path == "probs":
        return sampling.sample_probs(out[0].cpu().numpy(), params, generator)
    idx, vals, ties = out
    ids = idx.cpu().numpy()
    logits = vals.float().cpu().numpy()
    k = ids.shape[1]
    for r in np.flatnonzero(ties.cpu().numpy()):
        row = last[r].float().cpu().numpy()
        kth = logits[r, -1]
        above = np.flatnonzero(row > kth)
        cand = np.concatenate([above, np.flatnonzero(row == kth)[:k - len(above)]])
        ids[r], logits[r] = cand, row[cand]
    return sampling.sample_candidates(ids, logits, params, generator)


def sample_logits(logits: torch.Tensor, params: SamplingParams, generator: Any) -> np.ndarray:
    """(B, V) logits -> (B,) int64 host token ids by the shared spec. `generator`: Ops.make_generator's
    numpy Generator. Greedy float32 rows on CPU use numpy's argmax, ~4x faster than torch.argmax over a
    49k vocabulary (same result: the first maximal index, NaN wins)."""
    if params.temperature <= 0.0 and logits.dtype == torch.float32 and logits.device.type == "cpu":
        return np.argmax(logits.numpy(), axis=-1)
    return sample_finish(logits, sample_device(logits, params), params, generator)


__all__ = ["sample_device", "sample_finish", "sample_logits"]
