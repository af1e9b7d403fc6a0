"""The decode loop: batched prefill of right-padded prompts, then token-by-token decode.

Each prefill and decode step is bracketed by `recorder.begin_step/end_step`, so step events carry
exact wall times (TTFT = the prefill step, TPOT = a decode step) and every kernel in between
belongs to exactly one step.

Warm-up. A backend that sets `needs_warmup` (torch on CUDA) gets one untimed prefill and decode step of
the first request's shapes before its first timed step (`ops.untimed()`), so library set-up (cuBLAS
handles, lazily loaded kernels, the caching allocators) is not measured as the first TTFT. The source
says which: extra["warmup"] is "warm" (done before the first timed step) or "cold".
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import DECODE, PREFILL, SourceInfo
from llmtop.kernels.base import Ops, SamplingParams
from llmtop.model.llama import LlamaForward

_KV_ROUND = 256  # KV cache length granularity, so similar requests reuse one allocation

# on_tokens(step, new token per row or None, finish reason per row finishing now) -> rows to stop
OnTokens = Callable[[int, list[int | None], list[str | None]], Iterable[int] | None]


@dataclass(slots=True)
class Generation:
    text: str
    token_ids: list[int] = field(default_factory=list)  # generated ids (the EOS token included)
    prompt_tokens: int = 0
    finish_reason: str = "length"  # "eos", "length" or "stopped"


class Engine:
    """Runs generations of one loaded model on one `Ops` backend."""

    def __init__(self, loaded: Any, ops: Ops, *, max_batch: int = 1, max_context: int | None = None,
                 warmup: bool | None = None) -> None:
        cfg = loaded.config
        if max_batch < 1:
            raise LlmtopError(f"max_batch must be >= 1, got {max_batch}")
        if max_context is not None and max_context < 1:
            raise LlmtopError(f"max_context must be >= 1, got {max_context}")
        self.loaded = loaded
        self.cfg = cfg
        self.ops = ops
        self.max_batch = max_batch
        self.max_context = min(max_context or cfg.max_context, cfg.max_context)
        self.tokenizer = loaded.tokenizer
        self.model = LlamaForward(cfg, ops, loaded.weights)
        eos = tuple(getattr(self.tokenizer, "eos_token_ids", ()) or ()) or tuple(cfg.eos_token_ids)
        self.eos_ids = frozenset(int(t) for t in eos)
        self._pad_id = next(iter(sorted(self.eos_ids)), 0)
        self._step = 0  # step numbers run over the engine's lifetime, so they never repeat
        # warm-up: None = what the backend asks for; it runs once, inside the first generate
        want = bool(getattr(ops, "needs_warmup", False)) if warmup is None else warmup
        self.warmup = want and hasattr(ops, "untimed")
        self.warmed = False

    # -- tokens ------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, chat: bool = True) -> list[int]:
        tok = self.tokenizer
        if tok is None:  # random-weight presets: any ids will do, keep them deterministic
            ids = [1 + b % (self.cfg.vocab_size - 1) for b in prompt.encode("utf-8")]
        elif chat and self.cfg.chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
            ids = tok.encode(text, add_special_tokens=False)
        else:
            ids = tok.encode(prompt, add_special_tokens=True)
        if not ids:  # empty prompt without template or BOS: start from BOS/EOS so there is a position 0
            bos = self.cfg.bos_token_id
            ids = [bos if bos is not None else self._pad_id]
        return list(ids)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """A multi-turn conversation ([{"role", "content"}, ...], ending with the user's turn) as prompt
        ids through the model's chat template (without one: the turns' texts one after another)."""
        tok = self.tokenizer
        if tok is not None and self.cfg.chat_template:
            text = tok.apply_chat_template(messages, add_generation_prompt=True)
            return list(tok.encode(text, add_special_tokens=False))
        return self.encode_prompt("\n\n".join(m["content"] for m in messages), chat=False)

    def decode_tokens(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(f"<{t}>" for t in ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- generation --------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        max_new_tokens: int | Sequence[int],
        sampling: SamplingParams = SamplingParams(),  # noqa: B008 - frozen dataclass, safe default
        chat: bool = True,
        stop_event: threading.Event | None = None,
        on_tokens: OnTokens | None = None,
    ) -> list[Generation]:
        """Generate for a batch of prompts (text, or token ids used as they are).

        `max_new_tokens` is one limit for all rows or one per row. `on_tokens(step, tokens, finished)` runs
        on this thread after the prefill (step 0) and every decode step: `tokens[b]` is row b's new token
        (None once the row has finished), `finished[b]` the finish reason ("eos" / "length") when row b
        finished at this step. It may return row indices to stop now (finish_reason "stopped"); the batch
        keeps its shape, as for rows finished by EOS. `stop_event` stops every row.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise LlmtopError("no prompts given")
        if len(prompts) > self.max_batch:
            raise LlmtopError(f"{len(prompts)} prompts exceed the engine's max_batch of {self.max_batch}")
        limits = np.broadcast_to(np.asarray(max_new_tokens, dtype=np.int64), (len(prompts),))
        if limits.size and int(limits.min()) < 0:
            raise LlmtopError(f"max_new_tokens must be >= 0, got {int(limits.min())}")
        if sampling.temperature < 0 or sampling.top_k < 0 or not 0.0 < sampling.top_p <= 1.0:
            raise LlmtopError("sampling needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
        encoded = [self.encode_prompt(p, chat) if isinstance(p, str) else self._check_ids(p) for p in prompts]
        lens = np.array([len(e) for e in encoded], dtype=np.int64)
        ctx = self.max_context
        longest = int(lens.max())
        if longest > ctx:
            raise LlmtopError(f"prompt is {longest} tokens, longer than the context of {ctx} tokens")
        gens = [Generation(text="", prompt_tokens=len(e)) for e in encoded]
        if int(limits.max()) == 0:
            return gens
        # A row of length L can emit at most ctx - L + 1 tokens: the last one is never fed back.
        # Rows asking for 0 tokens still run the shared prefill but keep none of it.
        budget = np.minimum(limits, ctx - lens + 1)
        B, T = len(prompts), longest
        # highest cache slot each row writes
        last_pos = np.maximum(T - 1, lens + np.maximum(budget, 1) - 2).astype(np.int32)
        need = int(last_pos.max()) + 1
        kv_len = min(ctx, -(-need // _KV_ROUND) * _KV_ROUND)

        run_ctx = getattr(self.ops, "run_context", None)
        with run_ctx() if run_ctx is not None else contextlib.nullcontext():
            self.ops.alloc_kv_cache(B, kv_len)
            if self.warmup and not self.warmed:
                self._warm_up(lens, last_pos, sampling)
            self._loop(encoded, lens, budget, last_pos, gens, sampling, stop_event, on_tokens)
        for g in gens:
            g.text = self.decode_tokens(g.token_ids)
        return gens

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        out = [int(t) for t in ids]
        if not out:
            raise LlmtopError("a tokenized prompt must have at least one token")
        bad = [t for t in out if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise LlmtopError(f"token id {bad[0]} is outside the vocabulary of {self.cfg.vocab_size}")
        return out

    def _warm_up(self, lens: np.ndarray, last_pos: np.ndarray, sampling: SamplingParams) -> None:
        """One untimed prefill + decode step with the first request's shapes (pad ids), on this thread (cuBLAS
        handles are per thread). It writes only cache slots the real prefill and first decode step overwrite
        before any query reads them, and draws from its own generator, so results are unchanged."""
        ops, fwd = self.ops, self.model.forward
        B, T = len(lens), int(lens.max())
        ids = np.full((B, T), self._pad_id, dtype=np.int32)
        positions = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy()
        gen = ops.make_generator(0)
        with ops.untimed():  # type: ignore[attr-defined]
            ops.sample(fwd(ids, positions, (lens - 1).astype(np.int32), PREFILL), sampling, gen)
            pos = np.minimum(lens, last_pos).astype(np.int32).reshape(B, 1)
            ops.sample(fwd(ids[:, :1].copy(), pos, np.zeros(B, dtype=np.int32), DECODE), sampling, gen)
        self.warmed = True

    def _loop(
        self,
        encoded: list[list[int]],
        lens: np.ndarray,
        budget: np.ndarray,
        last_pos: np.ndarray,
        gens: list[Generation],
        sampling: SamplingParams,
        stop_event: threading.Event | None,
        on_tokens: OnTokens | None,
    ) -> None:
        ops, rec, fwd = self.ops, self.ops.recorder, self.model.forward
        B, T = len(encoded), int(lens.max())
        ids = np.full((B, T), self._pad_id, dtype=np.int32)
        for b, e in enumerate(encoded):
            ids[b, : len(e)] = e
        positions = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy()
        generator = ops.make_generator(sampling.seed)
        active = budget > 0
        for b in np.flatnonzero(~active):
            gens[b].finish_reason = "length"
        eos = self.eos_ids
        step = 0

        def take(tokens: np.ndarray) -> None:
            new: list[int | None] = [None] * B
            finished: list[str | None] = [None] * B
            for b in np.flatnonzero(active):
                t = int(tokens[b])
                g = gens[b]
                g.token_ids.append(t)
                new[b] = t
                if t in eos:
                    g.finish_reason, active[b], finished[b] = "eos", False, "eos"
                elif len(g.token_ids) >= budget[b]:
                    g.finish_reason, active[b], finished[b] = "length", False, "length"
            if on_tokens is not None:
                for b in on_tokens(step, new, finished) or ():
                    if active[b]:
                        gens[b].finish_reason, active[b] = "stopped", False

        if stop_event is not None and stop_event.is_set():
            for b in np.flatnonzero(active):
                gens[b].finish_reason = "stopped"
            return
        rec.begin_step(PREFILL, self._step, int(lens.sum()), B, T)
        logits = fwd(ids, positions, (lens - 1).astype(np.int32), PREFILL)
        tokens = ops.sample(logits, sampling, generator)
        rec.end_step()
        self._step += 1
        take(tokens)

        # Finished rows keep running at a frozen position (clamped to the slots the cache was sized
        # for) so the batch shape never changes; only active rows count as produced tokens.
        pos = np.minimum(lens, last_pos).astype(np.int32)  # where each row's next token goes
        feed = tokens.astype(np.int32)
        zero = np.zeros(B, dtype=np.int32)
        while active.any():
            if stop_event is not None and stop_event.is_set():
                for b in np.flatnonzero(active):
                    gens[b].finish_reason = "stopped"
                return
            step += 1
            step_pos = pos.reshape(B, 1).copy()  # a fresh array per step: ops cache per-step state
            rec.begin_step(DECODE, self._step, int(active.sum()), B, int(step_pos.max()) + 1)
            logits = fwd(feed.reshape(B, 1), step_pos, zero, DECODE)
            tokens = ops.sample(logits, sampling, generator)
            rec.end_step()
            self._step += 1
            was_active = active.copy()
            take(tokens)
            feed = np.where(was_active, tokens, feed).astype(np.int32)
            pos = np.minimum(np.where(active, pos + 1, pos), last_pos).astype(np.int32)

    # -- description -------------------------------------------------------------------------
    def source_info(self) -> SourceInfo:
        ops = self.ops
        return SourceInfo(
            kind="live",
            backend=ops.backend,
            device=ops.device_name,
            model=self.loaded.source,
            dtype=ops.dtype_name,
            # ", warm": an untimed warm-up runs before the first timed step (the text header shows it)
            timing=(ops.timing + (", warm" if self.warmup else "")) if ops.recorder.enabled else "off",
            max_context=self.max_context,
            n_layers=self.cfg.n_layers,
            extra={
                "model_name": self.cfg.name,
                "random_weights": bool(getattr(self.loaded, "random_weights", False)),
                "max_batch": self.max_batch,
                "warmup": "warm" if self.warmup else "cold",
                "warmup_rounds": int(getattr(self, "warmup_rounds", 0)),  # --warmup: untimed whole rounds
                **({"adapter": ops.adapter_summary()} if hasattr(ops, "adapter_summary") else {}),
                **(ops.source_extra() if hasattr(ops, "source_extra") else {}),  # CUDA: device_uuid, tf32
                **({"device_peak": pk} if (pk := ops.device_peak()) is not None else {}),
            },
        )


__all__ = ["Engine", "Generation", "OnTokens"]
