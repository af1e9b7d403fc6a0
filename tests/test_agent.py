"""The agent and its wire format: round trips, refusals, bad frames, slow viewers, torch hooks."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

import numpy as np
import pytest

import llmtop.agent as agent_mod
from llmtop.agent import wire
from llmtop.attach.agent_client import AgentCollector
from llmtop.collectors.queue import BoundedQueue
from llmtop.errors import LlmtopError
from llmtop.events import DECODE, KERNEL_DTYPE, PREFILL, STEP_DTYPE, EventBatch, NameTable


def _wait(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _batches(q: BoundedQueue) -> list[EventBatch]:
    return [i for i in q.get_many(0) if isinstance(i, EventBatch)]


def test_batch_round_trip_and_malformed() -> None:
    rng = np.random.default_rng(0)
    k = np.zeros(5, KERNEL_DTYPE)
    k["name"] = [0, 1, 2, 1, 0]
    k["dur_ns"] = rng.integers(1, 10**6, 5)
    k["layer"] = [-1, 0, 0, 1, -1]
    s = np.zeros(2, STEP_DTYPE)
    s["phase"], s["tokens"], s["dur_ns"] = [PREFILL, DECODE], [12, 3], [5, 6]
    frame = wire.encode_batch(EventBatch(k, s, 0, ["a", "bé", "c"]))
    length, ftype = struct.unpack_from("<IB", frame)
    assert ftype == wire.BATCH and length == len(frame) - 5
    b = wire.decode_batch(frame[5:])
    assert b.new_names == ["a", "bé", "c"] and b.names_base == 0
    assert np.array_equal(b.kernels, k) and np.array_equal(b.steps, s)
    for bad in (frame[5:-1], frame[5:] + b"x", frame[5:12], b""):
        with pytest.raises(wire.WireError):
            wire.decode_batch(bad)
    with pytest.raises(wire.WireError):
        wire.frame(wire.BATCH, b"\0" * (wire.MAX_FRAME + 1))


def test_manual_api_streams_to_viewers_and_survives_restart() -> None:
    agent = agent_mod.start("127.0.0.1:0")
    q1, q2 = BoundedQueue(), BoundedQueue()
    v1, v2 = AgentCollector(agent.address, backoff=(0.05, 0.2)), AgentCollector(agent.address)
    v1.start(q1)
    v2.start(q2)
    try:
        assert _wait(lambda: agent.viewers == 2)
        for i in range(4):
            with agent.step("decode", tokens=2, batch=2, ctx=10 + i):
                for layer in range(3):
                    with agent.layer(layer):
                        pass
                with agent.kernel("matmul:lm_head", "matmul", m=2, n=100, k=64):
                    pass
        assert _wait(lambda: v1.gen_tokens == 8 and v2.gen_tokens == 8)
        b1 = _batches(q1)
        names = NameTable()
        for b in b1:
            names.extend(b.names_base, b.new_names)
        ks = np.concatenate([b.kernels for b in b1])
        assert len(ks) == 16
        assert sorted({names[i] for i in ks["name"]}) == ["decoder_layer", "matmul:lm_head"]
        assert set(ks["layer"][ks["name"] == names.names.index("decoder_layer")]) == {0, 1, 2}
        assert v1.source is not None and v1.source.kind == "attach"
        port = agent.port
        agent.close()
        assert _wait(lambda: v1.link == "disconnected")
        agent = agent_mod.start(f"127.0.0.1:{port}")
        assert _wait(lambda: v1.link == "connected" and v1.connects == 2)
        with agent.step("prefill", tokens=7, batch=1, ctx=7), agent.kernel("custom:thing"):
            pass
        assert _wait(lambda: v1.gen_tokens == 9)  # a prefill yields one token per sequence
        b = _batches(q1)
        names2 = names
        for x in b:
            names2.extend(x.names_base, x.new_names)
        # ids re-mapped into the viewer's table even though the new agent numbered names afresh
        assert names2[int(b[-1].kernels["name"][0])] == "custom:thing"
    finally:
        for v in (v1, v2):
            v.stop()
            v.join(5)
        agent.close()
    assert not v1.alive and not v2.alive


def test_token_rules() -> None:
    with pytest.raises(LlmtopError, match="token is required"):
        agent_mod.start("0.0.0.0:0")
    with pytest.raises(LlmtopError, match="bad agent address"):
        agent_mod.start("127.0.0.1:notaport")
    agent = agent_mod.start("127.0.0.1:0", token="s3cret")
    q = BoundedQueue()
    bad, good, none = (
        AgentCollector(agent.address, "wrong"),
        AgentCollector(agent.address, "s3cret"),
        AgentCollector(agent.address),
    )
    for c in (bad, good, none):
        c.start(q)
    try:
        assert _wait(lambda: bad.link == "refused" and none.link == "refused" and good.link == "connected")
        assert "token" in (bad.link_error or "")
        assert agent.refused >= 2 and agent.viewers == 1
        # garbage instead of a hello is refused too
        with socket.create_connection(("127.0.0.1", agent.port)) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.settimeout(5)
            # closed without a welcome (or reset, since our unread request was still in its buffer)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""  # or reset, since our unread request was still in its buffer
        assert _wait(lambda: agent.refused >= 3)
    finally:
        for c in (bad, good, none):
            c.stop()
            c.join(5)
        agent.close()


def test_viewer_rejects_oversized_and_unknown_frames() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    bad_frames = [
        struct.pack("<IB", wire.MAX_FRAME + 1, wire.BATCH),
        struct.pack("<IB", 3, 99) + b"abc",
        wire.frame(wire.SOURCE, b"[1, 2]"),
    ]

    def fake_agent() -> None:
        for f in bad_frames:
            conn, _ = srv.accept()
            with conn:
                wire.read_hello(conn)
                conn.sendall(wire.encode_welcome(wire.OK, time.perf_counter_ns()) + f)
                time.sleep(0.2)

    t = threading.Thread(target=fake_agent, daemon=True)
    t.start()
    c = AgentCollector(f"127.0.0.1:{port}", backoff=(0.02, 0.05))
    c.start(BoundedQueue())
    try:
        assert _wait(lambda: c.rejected_frames == 3)
    finally:
        c.stop()
        c.join(5)
        srv.close()


def test_slow_viewer_never_blocks_the_loop() -> None:
    agent = agent_mod.start("127.0.0.1:0", viewer_buffer_events=50, interval=0.005)
    s = socket.create_connection(("127.0.0.1", agent.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(wire.encode_hello(None))
    try:
        assert wire.read_welcome(s)[1] == wire.OK
        assert _wait(lambda: agent.viewers == 1)
        t0 = time.perf_counter()
        for i in range(3000):  # this viewer never reads: its buffer fills, the loop goes on
            with agent.step("decode", tokens=1, ctx=i):
                for layer in range(4):
                    with agent.layer(layer):
                        pass
            if i % 300 == 0:
                time.sleep(0.01)
        dt = time.perf_counter() - t0
        assert _wait(lambda: agent.published_events >= 3000 * 5)
        assert agent.dropped_events > 0
        assert dt < 10.0
        # the drop count reaches the viewer in STATUS frames
        s.settimeout(5)
        seen = 0
        while True:
            ftype, payload = wire.read_frame(s)
            if ftype == wire.STATUS:
                seen = wire.decode_json(payload)["dropped"]
                if seen > 0:
                    break
        assert seen > 0
    finally:
        s.close()
        agent.close()


def test_silent_connections_cost_bounded_threads_and_a_viewer_still_connects() -> None:
    """1,000 connections that never send a hello: no thread each, the oldest dropped past the cap."""
    agent = agent_mod.start("127.0.0.1:0")
    before = threading.active_count()
    peak = before
    socks: list[socket.socket] = []
    v = AgentCollector(agent.address)
    try:
        for i in range(1000):
            socks.append(socket.create_connection(("127.0.0.1", agent.port), timeout=10))
            if i % 50 == 0:
                peak = max(peak, threading.active_count())
        peak = max(peak, threading.active_count())
        assert peak <= before + 1  # the old agent started a handshake thread per connection
        # past max_pending, the oldest are dropped (and counted); the agent keeps the newest
        assert _wait(lambda: agent.refused >= 1000 - agent.max_pending)
        socks[0].settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert socks[0].recv(1) == b""
        # a real viewer gets in while the silent ones still hold their places, and receives events
        q = BoundedQueue()
        v.start(q)
        assert _wait(lambda: v.link == "connected" and agent.viewers == 1)
        with agent.step("decode", tokens=1), agent.kernel("matmul:lm_head", "matmul"):
            pass
        assert _wait(lambda: v.gen_tokens == 1)
        assert threading.active_count() <= before + 2  # its collector thread and its sender thread
    finally:
        v.stop()
        v.join(5)
        for s in socks:
            s.close()
        agent.close()


def test_handshake_deadline_trickle_and_viewer_cap() -> None:
    agent = agent_mod.start("127.0.0.1:0")
    agent.handshake_timeout = 0.3
    silent = socket.create_connection(("127.0.0.1", agent.port))
    slow = None
    try:
        silent.settimeout(5)
        t0 = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert silent.recv(1) == b""  # closed at its deadline
        assert time.monotonic() - t0 < 3
        assert _wait(lambda: agent.refused == 1)
        # a hello that arrives a byte at a time is read whole
        agent.handshake_timeout = 5.0
        slow = socket.create_connection(("127.0.0.1", agent.port))
        for b in wire.encode_hello(None):
            slow.sendall(bytes([b]))
            time.sleep(0.005)
        slow.settimeout(5)
        assert wire.read_welcome(slow)[1] == wire.OK
        assert _wait(lambda: agent.viewers == 1)
        # one viewer more than max_viewers is refused with a message
        agent.max_viewers = 1
        extra = AgentCollector(agent.address, backoff=(0.05, 0.1))
        extra.start(BoundedQueue())
        try:
            assert _wait(lambda: extra.link == "refused")
            assert "viewers connected already" in (extra.link_error or "")
        finally:
            extra.stop()
            extra.join(5)
    finally:
        silent.close()
        if slow is not None:
            slow.close()
        agent.close()


def test_torch_hooks_time_decoder_layers() -> None:
    torch = pytest.importorskip("torch")

    class TinyDecoderLayer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            return x + self.lin(x)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.layers = torch.nn.ModuleList(TinyDecoderLayer() for _ in range(3))

        def forward(self, input_ids, attention_mask=None):
            x = self.emb(input_ids)
            for layer in self.layers:
                x = layer(x)
            return x

    model = Tiny()
    agent = agent_mod.start("127.0.0.1:0")
    inst = agent.instrument(model, ops="layers")  # one decoder_layer kernel per layer (default: op level)
    q = BoundedQueue()
    v = AgentCollector(agent.address)
    v.start(q)
    try:
        assert _wait(lambda: agent.viewers == 1)
        assert v.source is not None and v.source.n_layers == 3
        with torch.no_grad():
            model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5))
            for n in range(6, 9):
                model(torch.zeros(2, 1, dtype=torch.long), attention_mask=torch.ones(2, n))
        inst.close_step()  # a step stays open until the next forward: its wall is the token loop's
        assert _wait(lambda: v.steps_seen == 4)
        bs = _batches(q)
        steps = np.concatenate([b.steps for b in bs])
        ks = np.concatenate([b.kernels for b in bs])
        assert steps["phase"].tolist() == [PREFILL, DECODE, DECODE, DECODE]
        assert steps["tokens"].tolist() == [10, 2, 2, 2]
        assert steps["ctx"].tolist() == [5, 6, 7, 8]
        assert len(ks) == 12 and (ks["dur_ns"] > 0).all()
        assert v.gen_tokens == 2 + 6
    finally:
        v.stop()
        v.join(5)
        agent.close()


SCRIPT = """
import time, torch
import llmtop.agent

class FooBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
    def forward(self, x):
        return self.lin(x)

class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.h = torch.nn.ModuleList(FooBlock() for _ in range(2))
    def forward(self, input_ids):
        x = input_ids.float().unsqueeze(-1).expand(*input_ids.shape, 4)
        for b in self.h:
            x = b(x)
        return x

m = M()
end = time.monotonic() + 60
while llmtop.agent.current().viewers == 0 and time.monotonic() < end:
    time.sleep(0.02)
with torch.no_grad():
    m(torch.zeros(1, 4, dtype=torch.long))
    for _ in range(4):
        m(torch.zeros(1, 1, dtype=torch.long))
time.sleep(0.5)
"""


def test_zero_code_run_instruments_first_model(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "server.py"
    script.write_text(SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "LLMTOP_AGENT": f"127.0.0.1:{port}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtop.agent.run", str(script)], env=env, cwd=root, stderr=subprocess.PIPE
    )
    q = BoundedQueue()
    v = AgentCollector(f"127.0.0.1:{port}", backoff=(0.05, 0.2))
    v.start(q)
    try:
        assert _wait(lambda: v.steps_seen == 5, 60), (
            proc.stderr.read().decode() if proc.poll() is not None else ""
        )
        steps = np.concatenate([b.steps for b in _batches(q)])
        assert steps["phase"].tolist() == [PREFILL] + [DECODE] * 4
        assert v.gen_tokens == 5
        assert proc.wait(30) == 0
    finally:
        v.stop()
        v.join(5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
