"""vLLM support that runs without vLLM: step facts from scheduler outputs, and the op plan of a model
built from modules shaped like vLLM's (same class names, same `vllm.` module path, same call
signatures). The real server is tests/test_run_vllm.py (`make test-vllm`)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from llmtop.agent.vllm_hooks import StepFacts
from llmtop.events import DECODE, PREFILL


def so(sched: dict[str, int], new: list[tuple[str, int, int]] = (), cached: dict[str, int] | None = None,
       finished: set[str] = frozenset()) -> NS:
    """A SchedulerOutput: new = (req id, prompt length, computed), cached = {req id: computed}."""
    cached = cached or {}
    return NS(num_scheduled_tokens=sched, total_num_scheduled_tokens=sum(sched.values()),
              scheduled_new_reqs=[NS(req_id=r, prompt_token_ids=list(range(p)), prompt_embeds=None,
                                     num_computed_tokens=c) for r, p, c in new],
              scheduled_cached_reqs=NS(req_ids=list(cached), num_computed_tokens=list(cached.values())),
              finished_req_ids=set(finished))


def test_prefill_then_decode_counts_like_the_engine() -> None:
    f = StepFacts()
    # two new prompts (12 and 13 tokens): 25 prompt tokens, both sample a first token
    assert f(so({"a": 12, "b": 13}, new=[("a", 12, 0), ("b", 13, 0)])) == (PREFILL, 25, 2, 13)
    assert f(so({"a": 1, "b": 1}, cached={"a": 12, "b": 13})) == (DECODE, 2, 2, 14)


def test_mixed_step_and_chunked_prefill() -> None:
    f = StepFacts()
    f(so({"a": 4}, new=[("a", 4, 0)]))
    # a decodes while c's 100-token prompt runs its first 60-token chunk: c does not sample yet
    assert f(so({"a": 1, "c": 60}, new=[("c", 100, 0)], cached={"a": 4})) == (PREFILL, 60, 1, 60)
    # the rest of c's prompt (a cached request now): 40 prompt tokens, and now c samples too
    assert f(so({"a": 1, "c": 40}, cached={"a": 5, "c": 60})) == (PREFILL, 40, 2, 100)
    assert f(so({"a": 1, "c": 1}, cached={"a": 6, "c": 100})) == (DECODE, 2, 2, 101)


def test_prefix_cache_hit_counts_only_computed_prompt_tokens() -> None:
    f = StepFacts()
    assert f(so({"a": 4}, new=[("a", 36, 32)])) == (PREFILL, 4, 1, 36)


def test_finished_requests_are_forgotten() -> None:
    f = StepFacts()
    f(so({"a": 5}, new=[("a", 5, 0)]))
    f(so({"b": 1}, cached={"b": 9}, finished={"a"}))
    assert "a" not in f.prompt_len


torch = pytest.importorskip("torch")


def _vllm_like_model() -> object:
    """Two decoder layers of vLLM-shaped modules: a `vllm.`-module RotaryEmbedding shared by both
    layers, an AttentionLayerBase subclass, LinearBase-like linears returning (out, bias), SiluAndMul,
    a VocabParallelEmbedding and a LogitsProcessor called as logits_processor(lm_head, hidden)."""
    nn = torch.nn
    ns: dict[str, object] = {}
    code = '''
class AttentionLayerBase:
    pass

class Lin(nn.Module):
    def __init__(self, k, n):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, k) * 0.02)
        self.input_size_per_partition, self.output_size_per_partition = k, n
        self.quant_method = object()
    def forward(self, x):
        return x @ self.weight.t(), None

class QKVParallelLinear(Lin): pass
class RowParallelLinear(Lin): pass

class RotaryEmbedding(nn.Module):
    def forward(self, positions, q, k):
        return q * 1.0, k * 1.0

class Attention(nn.Module, AttentionLayerBase):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None])[0]

class SiluAndMul(nn.Module):
    def forward(self, x):
        d = x.shape[-1] // 2
        return torch.nn.functional.silu(x[..., :d]) * x[..., d:]

class RMSNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

class VocabParallelEmbedding(nn.Module):
    def __init__(self, v, d):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(v, d))
    def forward(self, ids):
        return self.weight[ids]

class ParallelLMHead(VocabParallelEmbedding): pass

class LogitsProcessor(nn.Module):
    def forward(self, lm_head, h):
        return h @ lm_head.weight.t()

class LlamaAttention(nn.Module):
    def __init__(self, rope):
        super().__init__()
        self.qkv_proj = QKVParallelLinear(32, 96)
        self.o_proj = RowParallelLinear(32, 32)
        self.rotary_emb = rope
        self.attn = Attention()
    def forward(self, positions, h):
        qkv, _ = self.qkv_proj(h)
        q, k, v = qkv.split(32, dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v))[0]

class LlamaDecoderLayer(nn.Module):
    def __init__(self, rope):
        super().__init__()
        self.input_layernorm = RMSNorm()
        self.self_attn = LlamaAttention(rope)
        self.post_attention_layernorm = RMSNorm()
        self.gate_up_proj = QKVParallelLinear(32, 128)
        self.act_fn = SiluAndMul()
        self.down_proj = RowParallelLinear(64, 32)
    def forward(self, positions, h):
        h = h + self.self_attn(positions, self.input_layernorm(h))
        x, _ = self.gate_up_proj(self.post_attention_layernorm(h))
        return h + self.down_proj(self.act_fn(x))[0]

class LlamaForCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        rope = RotaryEmbedding()
        self.embed_tokens = VocabParallelEmbedding(50, 32)
        self.layers = nn.ModuleList([LlamaDecoderLayer(rope) for _ in range(2)])
        self.norm = RMSNorm()
        self.lm_head = ParallelLMHead(50, 32)
        self.logits_processor = LogitsProcessor()
    def forward(self, input_ids, positions):
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(positions, h)
        return self.norm(h)
    def compute_logits(self, h):
        return self.logits_processor(self.lm_head, h)
'''
    glb = {"nn": nn, "torch": torch, "__name__": "vllm.model_executor.fake"}
    exec(compile(code, "vllm_fake.py", "exec"), glb)  # classes whose __module__ is vllm.*
    ns.update(glb)
    torch.manual_seed(0)
    return ns["LlamaForCausalLM"]()


def test_vllm_shaped_model_op_plan_and_engine_steps() -> None:
    from llmtop.agent.core import Agent
    from llmtop.agent.torch_hooks import TorchInstrumentation, set_engine_steps
    from llmtop.agent.torch_ops import plan_ops
    from llmtop.stats.aggregator import Aggregator

    model = _vllm_like_model()
    plan = {(s.name, s.layer) for s in plan_ops(model, list(model.layers))}
    assert ("rope", -2) in plan  # one rotary module shared by both layers: its layer is read at call time
    assert {("matmul:qkv_proj", 0), ("matmul:down_proj", 1), ("silu_mul", 0), ("attention", 1),
            ("embedding", -1), ("matmul:lm_head", -1), ("rmsnorm:final_norm", -1)} <= plan

    agent = Agent("127.0.0.1:0")
    set_engine_steps(True)
    try:
        inst = TorchInstrumentation(agent, model, ops="all")
        ids, pos = torch.arange(5), torch.arange(5)
        with torch.no_grad():
            model(ids, pos)  # a warm-up forward outside the engine's steps: not a step, not timed
            inst.begin_engine_step(PREFILL, 5, 1, 5)
            model.compute_logits(model(ids, pos))
            inst.close_step()
            for t in range(3):
                inst.begin_engine_step(DECODE, 1, 1, 6 + t)
                model.compute_logits(model(ids[:1], pos[:1]))
                inst.close_step()
        inst.remove()
    finally:
        set_engine_steps(False)
    agg = Aggregator()
    agg.set_source(inst.source_info())
    b = agent.recorder.drain()
    agg.ingest(b)
    names = [agent.names[int(i)] for i in b.kernels["name"]]
    assert len(b.steps) == 4 and list(b.steps["tokens"]) == [5, 1, 1, 1]
    layers = b.kernels["layer"]
    rope_layers = sorted({int(layer) for n, layer in zip(names, layers, strict=True) if n == "rope"})
    assert rope_layers == [0, 1]
    lm = [(int(r["m"]), int(r["n"]), int(r["k"])) for n, r in zip(names, b.kernels, strict=True)
          if n == "matmul:lm_head"]
    assert lm[0] == (5, 50, 32) and lm[1] == (1, 50, 32)
    assert names.count("attention:prefill") == 2 and names.count("attention:decode") == 6
    assert (b.steps["kernel_ns"] <= b.steps["dur_ns"]).all()
