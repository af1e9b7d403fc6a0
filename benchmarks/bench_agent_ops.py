"""Cost of the agent's torch instrumentation on an HF greedy generate (CPU): prints markdown tables.

A tiny random Llama (30 layers, hidden 256, fixed seed) generates 64 new tokens, greedy, batch 1, with:
no llmtop | agent ops="layers" | agent ops="all" | torch.profiler (CPU activities). The agent is started (its
publisher thread drains and encodes every 50 ms, no viewer). Configurations alternate within each round, so
machine noise hits them all: medians of tok/s, and the median over rounds of each configuration's time
over the same round's baseline (paired, steadier on a busy machine). Goal: ops="all" costs <= 5 %.

The second table compares the two ways to time a module, on the same modules ops="all" times: an instance
`forward` patch (what llmtop uses) vs a forward pre-hook + forward hook pair. Cost per call = (time per
token - baseline's, paired) / timed module calls per token; a single-Linear micro-benchmark gives the cost
without the model's noise.

    python benchmarks/bench_agent_ops.py [--rounds 5] [--tokens 64] [--layers 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import transformers

from llmtop.agent.core import Agent
from llmtop.agent.torch_hooks import _matmul_cpu, _plain_cpu
from llmtop.agent.torch_ops import find_decoder_layers, plan_ops


def build(layers: int) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def generate(model, ids, tokens: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds, every thread) of one greedy generate of `tokens` new tokens."""
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
            do_sample=False, pad_token_id=0,
        )
    return time.perf_counter() - t, time.process_time() - c


class Mechanism:
    """Times the ops="all" modules with instance forward patches or with hook pairs (no steps)."""

    def __init__(self, agent: Agent, model, hooks: bool) -> None:
        rec, pc = agent.recorder, time.perf_counter_ns
        self.undo: list = []
        for spec in plan_ops(model, find_decoder_layers(model)):
            nid, opc = rec.kernel_id(spec.name, spec.op_class)
            m = spec.module
            if hooks:
                box = [0]

                def pre(mod, args, box=box):
                    box[0] = pc()

                def post(mod, args, out, box=box, nid=nid, opc=opc, layer=spec.layer):
                    t0 = box[0]
                    rec.rows.append((nid, opc, layer, t0, pc() - t0, 0, 0, 0))

                self.undo += [m.register_forward_pre_hook(pre).remove, m.register_forward_hook(post).remove]
            else:
                f = m.forward
                m.forward = (
                    _matmul_cpu(f, rec, nid, opc, spec.layer, spec.n, spec.k)
                    if spec.n
                    else _plain_cpu(f, rec, nid, opc, spec.layer)
                )
                self.undo.append(lambda m=m: m.__dict__.pop("forward"))
        self.calls_per_forward = len(plan_ops(model, find_decoder_layers(model)))

    def remove(self) -> None:
        for u in self.undo:
            u()
        self.undo = []


def micro(n: int = 2000) -> tuple[float, float]:
    """ns per call added by (instance patch, hook pair) around a Linear(256, 688) on a (1, 1, 256) input."""
    agent = Agent("127.0.0.1:0")
    rec = agent.recorder
    nid, opc = rec.kernel_id("matmul:x", "matmul")
    x = torch.randn(1, 1, 256)
    mods = [torch.nn.Linear(256, 688) for _ in range(3)]
    mods[1].forward = _matmul_cpu(mods[1].forward, rec, nid, opc, 0, 688, 256)
    box = [0]
    mods[2].register_forward_pre_hook(lambda m, a: box.__setitem__(0, time.perf_counter_ns()))
    mods[2].register_forward_hook(
        lambda m, a, o: rec.rows.append((nid, opc, 0, box[0], time.perf_counter_ns() - box[0], 0, 0, 0))
    )
    best = [float("inf")] * 3
    with torch.no_grad():
        for _ in range(15):  # interleaved; the minimum is the cost without interference
            for i, m in enumerate(mods):
                rec.rows = []
                t = time.perf_counter_ns()
                for _ in range(n):
                    m(x)
                best[i] = min(best[i], (time.perf_counter_ns() - t) / n)
    return best[1] - best[0], best[2] - best[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = build(a.layers)
    ids = torch.randint(3, 2048, (1, a.prompt), generator=torch.Generator().manual_seed(1))
    generate(model, ids, 4)  # warm-up
    probe = Agent("127.0.0.1:0")  # not started: count what ops="all" records per forward
    inst = probe.instrument(model, ops="all")
    generate(model, ids, 4)
    inst.remove()
    calls_per_token = len(probe.recorder.drain().kernels) / 4

    agent = Agent("127.0.0.1:0").start()
    times: dict[str, list[tuple[float, float]]] = {}
    mech_calls = 0

    def run(name: str) -> None:
        nonlocal mech_calls
        if name in ("layers", "all"):
            inst = agent.instrument(model, ops=name)
            times.setdefault(name, []).append(generate(model, ids, a.tokens))
            inst.remove()
        elif name == "profiler":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]):
                times.setdefault(name, []).append(generate(model, ids, a.tokens))
            generate(model, ids, 4)  # untimed: the first run after a profile is slower, whatever it is
        elif name.startswith("mech-"):
            mech = Mechanism(agent, model, hooks=name == "mech-hooks")
            times.setdefault(name, []).append(generate(model, ids, a.tokens))
            mech.remove()
            mech_calls = mech.calls_per_forward
            agent.recorder.rows = []
        else:
            times.setdefault(name, []).append(generate(model, ids, a.tokens))

    configs = ["none", "layers", "all", "profiler", "mech-patch", "mech-hooks"]
    for r in range(a.rounds):
        for name in configs[r % len(configs) :] + configs[: r % len(configs)]:
            run(name)
    agent.close()

    wall = {k: [w for w, _ in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in wall.items()}
    # paired: each round's time over the same round's baseline, so slow phases of a busy machine cancel out
    pairs = {k: list(zip(v, wall["none"], strict=True)) for k, v in wall.items()}
    ratio = {k: statistics.median(t / b for t, b in v) for k, v in pairs.items()}
    delta = {k: statistics.median(t - b for t, b in v) for k, v in pairs.items()}
    print(f"\nHF greedy generate, tiny random Llama ({a.layers} layers, hidden 256), batch 1, prompt "
          f"{a.prompt}, {a.tokens} new tokens, torch {torch.__version__}, {a.threads} thread(s), "
          f"{a.rounds} rounds; ops=\"all\" times {calls_per_token:.0f} calls per token\n")
    print("| configuration | tok/s (median) | min..max tok/s | tok/s vs no llmtop "
          "| time vs no llmtop (paired) |")
    print("|---|---|---|---|---|")
    labels = {"none": "no llmtop", "layers": 'agent ops="layers"', "all": 'agent ops="all"',
              "profiler": "torch.profiler (CPU)"}
    for k, label in labels.items():
        tps = [a.tokens / w for w in wall[k]]
        print(f"| {label} | {a.tokens / med[k]:.1f} | {min(tps):.1f}..{max(tps):.1f} "
              f"| {med['none'] / med[k]:.3f} | {(ratio[k] - 1) * 100:+.1f} % |")
    mp, mh = micro()
    print(f"\nTiming mechanism on the {mech_calls} modules ops=\"all\" times per forward (no function ops, "
          "no steps):\n")
    print("| mechanism | tok/s (median) | time vs no llmtop (paired) | ns per timed call (model, paired) "
          "| ns per call (Linear(256, 688) micro-bench) |")
    print("|---|---|---|---|---|")
    rows = (("mech-patch", "instance forward patch", mp), ("mech-hooks", "pre + post forward hook", mh))
    for k, label, m in rows:
        per = delta[k] / (a.tokens * mech_calls) * 1e9
        print(f"| {label} | {a.tokens / med[k]:.1f} | {(ratio[k] - 1) * 100:+.1f} % | {per:.0f} | {m:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
