"""Op-level torch instrumentation (llmtop/agent/torch_hooks.py) on tiny random HF decoders, CPU only."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmtop.agent.core import Agent  # noqa: E402
from llmtop.agent.torch_hooks import TorchInstrumentation, install_global_finder  # noqa: E402
from llmtop.errors import LlmtopError  # noqa: E402
from llmtop.events import DECODE, NO_LAYER, PREFILL  # noqa: E402

PROMPT, NEW, BATCH = 40, 8, 2


def _llama(layers: int = 2):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _qwen2(layers: int = 3):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    return transformers.Qwen2ForCausalLM(cfg).eval()


def _gpt2(layers: int = 2):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=128, n_positions=256, n_embd=64, n_layer=layers, n_head=4)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _prompts() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 128, (BATCH, PROMPT), generator=g)


def _generate(model, **kw):
    ids = _prompts()
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW,
            do_sample=False, pad_token_id=0, **kw,
        )


def _drain(agent: Agent):
    """(steps, kernels, kernel names) from every recorder the agent drains."""
    bs = [b for b in (r.drain() for r in agent._recorders) if b is not None]
    steps = np.concatenate([b.steps for b in bs])
    ks = np.concatenate([b.kernels for b in bs])
    return steps, ks, np.array(agent.names.names, dtype=object)[ks["name"]]


def _check_steps(steps, ks) -> None:
    assert steps["phase"].tolist() == [PREFILL] + [DECODE] * (NEW - 1)
    assert steps["tokens"].tolist() == [BATCH * PROMPT] + [BATCH] * (NEW - 1)
    assert (steps["batch"] == BATCH).all()
    assert steps["ctx"].tolist() == [PROMPT + i for i in range(NEW)]
    assert (ks["dur_ns"] > 0).all()
    for s in steps:  # kernels never overlap and live inside their step
        mine = ks[ks["step"] == s["step"]]
        assert s["kernel_ns"] == mine["dur_ns"].sum() <= s["dur_ns"]
        assert (mine["start_ns"] >= s["start_ns"]).all()
        assert (mine["start_ns"] + mine["dur_ns"] <= s["start_ns"] + s["dur_ns"]).all()


@pytest.mark.parametrize("make", [_llama, _qwen2], ids=["llama", "qwen2"])
def test_hf_rope_decoder_op_level(make) -> None:
    model = make()
    n_layers = model.config.num_hidden_layers
    agent = Agent("127.0.0.1:0")
    inst = agent.instrument(model)
    assert agent.source.extra["ops"] == "all" and agent.source.n_layers == n_layers
    _generate(model)
    inst.close_step()
    assert inst.step == NEW
    steps, ks, names = _drain(agent)
    _check_steps(steps, ks)
    got = set(names)
    for want in ("matmul:q_proj", "matmul:k_proj", "matmul:v_proj", "matmul:o_proj", "matmul:gate_proj",
                 "matmul:up_proj", "matmul:down_proj", "matmul:lm_head", "rmsnorm:attn_norm",
                 "rmsnorm:ffn_norm", "rmsnorm:final_norm", "embedding", "attention:prefill",
                 "attention:decode", "rope", "rope:tables", "act:silu"):
        assert want in got, want
    assert "decoder_layer" not in got and "silu_mul" not in got
    for name in ("matmul:q_proj", "matmul:down_proj", "rmsnorm:attn_norm", "rope", "act:silu"):
        assert sorted(set(ks["layer"][names == name])) == list(range(n_layers)), name
    for name in ("matmul:lm_head", "embedding", "rmsnorm:final_norm", "rope:tables"):
        assert set(ks["layer"][names == name]) == {NO_LAYER}, name
    # one attention per layer per step, timed once although sdpa_attention_forward calls F.sdpa
    att = Counter(zip(names, ks["step"], ks["layer"], strict=True))
    assert all(att[(f"attention:{p}", s, i)] == 1 for s, p in [(0, "prefill"), (3, "decode")]
               for i in range(n_layers))
    assert (ks["phase"][names == "attention:decode"] == DECODE).all()
    q = ks[names == "matmul:q_proj"]
    hd = model.config.hidden_size
    assert (q["n"] == hd).all() and (q["k"] == hd).all()
    assert q["m"][q["step"] == 0].tolist() == [BATCH * PROMPT] * n_layers
    assert (q["m"][q["step"] > 0] == BATCH).all()
    kp = ks[names == "matmul:k_proj"]
    assert (kp["n"] == hd // 2).all()  # 2 kv heads of 4
    inst.remove()


def test_gpt2_conv1d_and_layernorm() -> None:
    model = _gpt2()
    agent = Agent("127.0.0.1:0")
    inst = agent.instrument(model)
    _generate(model)
    inst.close_step()
    steps, ks, names = _drain(agent)
    _check_steps(steps, ks)
    got = set(names)
    for want in ("matmul:c_attn", "matmul:c_proj", "matmul:c_fc", "matmul:lm_head", "layernorm:attn_norm",
                 "layernorm:ffn_norm", "layernorm:final_norm", "embedding", "embedding:wpe",
                 "attention:prefill", "attention:decode"):
        assert want in got, want
    assert not any(n.startswith("rope") for n in got)
    assert any(n.startswith("act:") for n in got)
    c = ks[names == "matmul:c_attn"]
    assert (c["n"] == 3 * 64).all() and (c["k"] == 64).all()
    assert c["m"][c["step"] == 0].tolist() == [BATCH * PROMPT] * 2
    assert sorted(set(ks["layer"][names == "layernorm:attn_norm"])) == [0, 1]
    assert set(ks["layer"][names == "layernorm:final_norm"]) == {NO_LAYER}
    inst.remove()


def test_layers_mode_one_kernel_per_layer() -> None:
    model = _llama(layers=3)
    agent = Agent("127.0.0.1:0")
    inst = agent.instrument(model, ops="layers")
    assert agent.source.extra["ops"] == "layers"
    assert agent.instrument(model) is inst  # the same agent again: the live handle
    with pytest.raises(LlmtopError, match="already instrumented"):
        TorchInstrumentation(Agent("127.0.0.1:0"), model)
    _generate(model)
    inst.close_step()
    steps, ks, names = _drain(agent)
    _check_steps(steps, ks)
    assert set(names) == {"decoder_layer"}
    assert len(ks) == 3 * NEW
    for s in range(NEW):
        assert sorted(ks["layer"][ks["step"] == s]) == [0, 1, 2]
    inst.remove()
    with pytest.raises(ValueError):
        agent.instrument(model, ops="bogus")


def _patch_points(model):
    import torch.nn.functional as F
    from transformers.generation.utils import GenerationMixin
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama import modeling_llama

    return (
        F.scaled_dot_product_attention, GenerationMixin.__dict__["generate"],
        torch.nn.Module.__dict__["__call__"],
        modeling_llama.apply_rotary_pos_emb, modeling_llama.eager_attention_forward,
        dict(ALL_ATTENTION_FUNCTIONS._local_mapping), sorted(ALL_ATTENTION_FUNCTIONS.keys()),
        [n for n, m in model.named_modules() if "forward" in m.__dict__],
    )


def test_remove_restores_everything() -> None:
    model = _llama()
    ids = _prompts()
    before = _patch_points(model)
    with torch.no_grad():
        ref = model(ids).logits
    agent = Agent("127.0.0.1:0")
    inst = agent.instrument(model)
    assert any("forward" in m.__dict__ for m in model.modules())
    assert _patch_points(model) != before
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    inst.remove()
    inst.remove()  # idempotent
    assert _patch_points(model) == before
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    steps, _, _ = _drain(agent)
    assert len(steps) == 1  # remove() closed the open step; the forward after it was not recorded


def test_global_finder_sees_keyword_input_ids() -> None:
    model = _llama()
    agent = Agent("127.0.0.1:0")
    call = torch.nn.Module.__dict__["__call__"]
    handle = install_global_finder(agent)
    try:
        assert torch.nn.Module.__dict__["__call__"] is not call
        _generate(model)  # generate calls the model with input_ids=... as a keyword
        assert torch.nn.Module.__dict__["__call__"] is call  # one shot: disarmed once the model is found
        (inst,) = agent._instrumentations
        # this generate call began before the model was found, so its return is not seen: close by hand
        assert inst.model is model and inst.step == NEW - 1 and inst._open
        inst.close_step()
        steps, ks, names = _drain(agent)
        _check_steps(steps, ks)
        assert "matmul:q_proj" in set(names)
        _generate(model)  # a later generate closes its own last step
        assert inst.step == 2 * NEW and not inst._open
        steps, ks, _ = _drain(agent)
        _check_steps(steps, ks)
    finally:
        handle.remove()
        for inst in agent._instrumentations:
            inst.remove()
    assert torch.nn.Module.__dict__["__call__"] is call


def test_compiled_model_is_named_and_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    """torch.compile's OptimizedModule: hooks cannot fire inside its graphs, so nothing is patched (a
    patched forward would change what dynamo traces) and one line says why and what to do."""
    model = _llama()
    compiled = torch.compile(model)
    before, fwd = _patch_points(model), compiled.__dict__.get("forward")
    agent = Agent("127.0.0.1:0")
    inst = agent.instrument(compiled)
    assert inst.compiled and "torch.compile" in inst.compiled
    assert _patch_points(model) == before and compiled.__dict__.get("forward") is fwd
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmtop: note: LlamaForCausalLM is torch.compile'd")
    assert "nothing timed" in inst.source_info().extra["instrumented"]
    inst.remove()


def test_hooks_that_never_fire_are_reported_once(capsys: pytest.CaptureFixture[str]) -> None:
    """Steps whose forwards reach no instrumented op (the model runs elsewhere, e.g. captured into
    graphs after instrumentation) end in one note after three steps, not in silently empty panes."""
    model = _llama()
    agent = Agent("127.0.0.1:0")
    inst = agent.instrument(model)
    for _ in range(5):  # steps opened by hand, no forward in them
        inst.recorder.begin_step(DECODE, inst.step, 1, 1, 1)
        inst._open = True
        inst.close_step()
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("llmtop: note:")]
    assert len(err) == 1 and "no instrumented op fired" in err[0]
    inst.remove()


class _SlowProcessor(transformers.LogitsProcessor):
    """Host work in the token loop that is not a kernel: 5 ms per generated token."""

    def __call__(self, input_ids, scores):
        time.sleep(0.005)
        return scores


def test_step_wall_includes_token_loop_host_time() -> None:
    model = _llama()
    agent = Agent("127.0.0.1:0")
    inst = agent.instrument(model)
    _generate(model, logits_processor=transformers.LogitsProcessorList([_SlowProcessor()]))
    assert not inst._open  # generate's return closed the last step
    steps, ks, _ = _drain(agent)
    _check_steps(steps, ks)
    dec = steps[steps["phase"] == DECODE]
    # the processor's 5 ms sleep is host time of the step: in its wall, not in its kernels (kernel time
    # itself is not bounded here: a loaded machine stretches it)
    assert (dec["dur_ns"] - dec["kernel_ns"] >= 5_000_000).all()
    inst.remove()


def test_plain_torch_model_with_sdpa() -> None:
    F = torch.nn.functional

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(16)
            self.qkv = torch.nn.Linear(16, 48)
            self.act = torch.nn.GELU()

        def forward(self, x):
            q, k, v = self.qkv(self.norm(x)).view(*x.shape[:2], 3, 2, 8).unbind(2)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return x + self.act(y.transpose(1, 2).reshape(x.shape))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = torch.nn.Embedding(32, 16)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(2))

        def forward(self, ids):
            x = self.tok(ids)
            for b in self.blocks:
                x = b(x)
            return x

    net = Net()
    agent = Agent("127.0.0.1:0")
    inst = agent.instrument(net)
    with torch.no_grad():
        net(torch.zeros(1, 6, dtype=torch.long))
        F.scaled_dot_product_attention(*(torch.zeros(1, 2, 3, 8),) * 3)  # outside the model: not timed
        net(torch.zeros(1, 1, dtype=torch.long))
    inst.close_step()
    steps, ks, names = _drain(agent)
    assert steps["phase"].tolist() == [PREFILL, DECODE] and steps["tokens"].tolist() == [6, 1]
    assert steps["ctx"].tolist() == [6, 7]
    assert Counter(names) == {
        "embedding:tok": 2, "layernorm:norm": 4, "matmul:qkv": 4, "act:gelu": 4,
        "attention:prefill": 2, "attention:decode": 2,
    }
    assert sorted(ks["layer"][names == "attention:decode"]) == [0, 1]
    inst.remove()


def test_linear_fast_path_follows_parametrization() -> None:
    """A Linear parametrized after instrumentation still computes through its parametrization."""
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    model = _llama()
    agent = Agent("127.0.0.1:0")
    inst = agent.instrument(model)
    ids = _prompts()
    lm = model.lm_head
    with torch.no_grad():
        ref = model(ids).logits
        parametrize.register_parametrization(lm, "weight", Double(), unsafe=True)
        assert torch.allclose(model(ids).logits, 2 * ref, atol=1e-5)
    inst.remove()
    names = _drain(agent)[2]
    assert (names == "matmul:lm_head").sum() == 2


class _FakeEvent:
    """Stands in for torch.cuda.Event on a CPU-only machine: record() reads the host clock."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.t = None

    def record(self, stream=None) -> None:
        self.t = time.perf_counter_ns()

    def query(self) -> bool:
        return self.t is not None

    def elapsed_time(self, end) -> float:
        return (end.t - self.t) / 1e6


def test_cuda_event_path_with_fake_events(monkeypatch) -> None:
    """The CUDA code path (pooled event pairs, resolved by CudaEventRecorder) with fake events: rows and event
    pairs stay aligned and get host-clock times. Real CUDA is not available here."""
    import types

    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    model = _llama()
    fake = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda"), dtype=torch.float16)
    model.parameters = lambda *a, **k: iter([fake])  # the device the instrumentation sees, only
    agent = Agent("127.0.0.1:0")
    try:
        inst = agent.instrument(model)
    finally:
        del model.parameters
    assert inst.cuda and inst.recorder is not agent.recorder and inst.recorder in agent._recorders
    assert agent.source.timing == "cuda events" and agent.source.device == "fake GPU"
    _generate(model)
    inst.remove()
    steps, ks, names = _drain(agent)
    _check_steps(steps, ks)
    assert {"matmul:q_proj", "attention:decode", "rope", "rmsnorm:attn_norm"} <= set(names)
    q = ks[names == "matmul:q_proj"]
    assert q["m"][q["step"] == 0].tolist() == [BATCH * PROMPT] * 2 and (q["k"] == 64).all()


class _StreamEvent(_FakeEvent):
    """A fake event that remembers the stream it was recorded on."""

    made = 0

    def __init__(self, enable_timing: bool = False) -> None:
        super().__init__(enable_timing)
        _StreamEvent.made += 1
        self.stream = None

    def record(self, stream=None) -> None:
        super().record(stream)
        self.stream = stream


def test_cuda_agent_records_on_each_modules_device_from_a_reused_pool(monkeypatch) -> None:
    """A model split over two (fake) GPUs: every op's events are recorded on the cached stream of the device
    holding its module (function ops: their layer's device), one anchor and one end event per device per
    step, the event pool is sized at install and reused (no event is created while the model runs), and each
    device's rows resolve against its own anchor, inside their step."""
    import types

    from llmtop.kernels import cuda_events

    streams = []

    def current_stream(device):
        streams.append(device)
        return f"stream:{device}"

    monkeypatch.setattr(torch.cuda, "Event", _StreamEvent)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    monkeypatch.setattr(cuda_events, "_current_stream", current_stream)
    model = _llama(layers=2)
    on = {0: types.SimpleNamespace(device=types.SimpleNamespace(type="cuda", index=0), dtype=torch.float16),
          1: types.SimpleNamespace(device=types.SimpleNamespace(type="cuda", index=1), dtype=torch.float16)}
    faked = [model] + [m for m in model.model.layers[1].modules()]
    for m in faked:  # the devices the instrumentation sees: the model (layer 0) on GPU 0, layer 1 on GPU 1
        m.parameters = (lambda d: lambda *a, **k: iter([on[d]]))(1 if m is not model else 0)
    agent = Agent("127.0.0.1:0")
    try:
        inst = agent.instrument(model)
    finally:
        for m in faked:
            del m.parameters
    rec = inst.recorder
    assert rec.devices == [0, 1] and inst._layer_marks is not None
    assert rec.pool_size >= 2 * inst.n_timed * 32
    made = _StreamEvent.made
    _generate(model)
    inst.remove()
    assert _StreamEvent.made == made  # the pool was enough: nothing allocated on the hot path
    assert streams.count(0) == streams.count(1) == NEW  # streams looked up once per device per step
    names = np.array(agent.names.names, dtype=object)
    for meta, rows, _, _, pending in list(rec._done):
        events, _, bounds, ends, short, _ = pending
        assert not short and len(bounds) == len(ends) == 2
        assert len(events) == 2 * len(rows) + 4  # a pair per op + anchor and end on each device
        for r in rows:
            want = "stream:1" if r[2] == 1 else "stream:0"
            assert events[r[3]].stream == events[r[4]].stream == want, (names[r[0]], r[2])
        assert {names[r[0]] for r in rows if r[2] == 1} >= {"attention:prefill" if meta[0] == PREFILL
                                                          else "attention:decode", "rope", "matmul:q_proj"}
    steps, ks, _ = _drain(agent)
    _check_steps(steps, ks)
    assert len(rec._pool) == rec.pool_size and len(rec.lane(1).pool) >= rec.pool_size


def test_cuda_agent_untimed_steps_when_the_pool_runs_dry(monkeypatch) -> None:
    """Nobody drains: the pool is never grown past its size; the steps that find it empty keep their wall and
    tokens, lose their kernels (kernel_ns -1) and are counted."""
    import types

    monkeypatch.setattr(torch.cuda, "Event", _StreamEvent)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    model = _llama()
    fake = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda", index=0), dtype=torch.float16)
    model.parameters = lambda *a, **k: iter([fake])
    agent = Agent("127.0.0.1:0")
    try:
        inst = agent.instrument(model)
    finally:
        del model.parameters
    rec = inst.recorder
    n = len(rec._pool)
    while len(rec._pool) > n // 32 * 3:  # room for about 3 steps
        rec._pool.pop()
    made = _StreamEvent.made
    _generate(model)
    inst.remove()
    assert _StreamEvent.made == made and rec.dropped_steps >= NEW - 3 and rec.dropped_rows > 0
    steps, ks, _ = _drain(agent)
    assert len(steps) == NEW and steps["tokens"].tolist()[0] == BATCH * PROMPT
    untimed = steps["kernel_ns"] == -1
    assert untimed.sum() == rec.dropped_steps and not untimed[0]
    assert set(ks["step"].tolist()) == set(steps["step"][~untimed].tolist())
