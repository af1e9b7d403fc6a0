"""`llmtop serve` input validation and request isolation, in process, on a real (tiny, random-weight) engine:
the real app, scheduler thread and engine, driven through Starlette's TestClient (which re-raises any
exception the app lets escape, so "no traceback for bad input" is checked on every request here)."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("starlette")
pytest.importorskip("torch")

from starlette.testclient import TestClient

from llmtop.errors import LlmtopError
from llmtop.kernels.base import SamplingParams
from llmtop.kernels.factory import make_ops
from llmtop.model.config import ModelConfig
from llmtop.model.engine import Engine
from llmtop.model.loader import LoadedModel
from llmtop.model.presets import random_weights
from llmtop.serve.app import build_app
from llmtop.serve.metrics import ServeMetrics
from llmtop.serve.scheduler import Request, Scheduler
from llmtop.serve.validate import parse_json

CTX = 64
VOCAB = 97


def _engine(max_batch: int = 4) -> Engine:
    cfg = ModelConfig("tiny", vocab_size=VOCAB, hidden_size=64, intermediate_size=96, n_layers=2, n_heads=4,
                      n_kv_heads=2, head_dim=16, max_context=CTX)
    lm = LoadedModel(cfg, random_weights(cfg, 0), None, "test:tiny", True)
    return Engine(lm, make_ops("cpu"), max_batch=max_batch)


@pytest.fixture(scope="module")
def served():
    eng = _engine()
    metrics = ServeMetrics("tiny")
    sched = Scheduler(eng, metrics, max_batch=4)
    sched.start()
    app = build_app(eng, sched, metrics, "tiny", aliases=("test:tiny",))
    with TestClient(app) as c:
        yield c, sched
    sched.stop()


BIG = 2**70
# (body, status, param): every one must be refused with OpenAI's error shape, before anything is queued
BAD_COMPLETIONS = [
    ({"prompt": "x", "max_tokens": 1e20}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**20}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": CTX}, 400, "max_tokens"),  # the 1-token prompt leaves CTX - 1
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 2.5}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": "8"}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "temperature": 1e300}, 400, "temperature"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "x", "temperature": BIG}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "x", "top_k": -2}, 400, "top_k"),
    ({"prompt": "x", "top_k": 0.5}, 400, "top_k"),
    ({"prompt": "x", "seed": BIG}, 400, "seed"),
    ({"prompt": "x", "seed": -(2**63) - 1}, 400, "seed"),
    ({"prompt": "x", "seed": 1.5}, 400, "seed"),
    ({"prompt": "x", "seed": "7"}, 400, "seed"),
    ({"prompt": "x", "stream": "false"}, 400, "stream"),
    ({"prompt": "x", "stream": 0}, 400, "stream"),
    ({"prompt": "x", "stream": True, "stream_options": {"include_usage": "yes"}}, 400,
     "stream_options.include_usage"),
    ({"prompt": "x", "stream_options": [1]}, 400, "stream_options"),
    ({"prompt": "x", "n": 2}, 400, "n"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ({"prompt": "x", "model": 3}, 400, "model"),
    ({"prompt": 3}, 400, "prompt"),
    ({"prompt": ["a", "b"]}, 400, "prompt"),
    ({}, 400, "prompt"),
    ({"prompt": "x" * CTX}, 400, "prompt"),  # no room left for a completion
]
BAD_CHAT = [
    ({"messages": []}, 400, "messages"),
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": [{"role": "user"}]}, 400, "messages[0]"),
    ({"messages": [{"role": 1, "content": "x"}]}, 400, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 1e20}, 400,
     "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**30}, 400, "max_tokens"),
]
# raw bodies Python's json module would accept (or choke on with something other than ValueError)
BAD_RAW = [
    b'{"prompt": "x", "max_tokens": NaN}',
    b'{"prompt": "x", "max_tokens": Infinity}',
    b'{"prompt": "x", "max_tokens": -Infinity}',
    b'{"prompt": "x", "temperature": NaN}',
    b'{"prompt": "x", "temperature": 1e400}',
    b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}",
    b'{"prompt": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"{not json",
    b"\xff\xfe{}",
    b"[1, 2]",
    b"null",
    b"",
]


def _assert_error(r, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize(("body", "status", "param"), BAD_COMPLETIONS)
def test_bad_completion_requests(served, body, status, param) -> None:
    c, _ = served
    err = _assert_error(c.post("/v1/completions", json=body), status, param)
    if status == 404:
        assert err["code"] == "model_not_found" and "gpt-4" in err["message"]


@pytest.mark.parametrize(("body", "status", "param"), BAD_CHAT)
def test_bad_chat_requests(served, body, status, param) -> None:
    c, _ = served
    _assert_error(c.post("/v1/chat/completions", json=body), status, param)


@pytest.mark.parametrize("raw", BAD_RAW, ids=lambda b: repr(b[:30]))
def test_bad_json_bodies(served, raw) -> None:
    c, _ = served
    _assert_error(c.post("/v1/completions", content=raw, headers={"content-type": "application/json"}), 400)


def test_nothing_queued_by_refused_requests(served) -> None:
    c, sched = served
    before = sched.batches
    for body, status, _ in BAD_COMPLETIONS:
        assert c.post("/v1/completions", json=body).status_code == status
    assert sched.batches == before and sched.waiting == 0


def test_body_size_limit(served) -> None:
    c, _ = served
    from llmtop.serve.validate import MAX_BODY_BYTES

    _assert_error(c.post("/v1/completions", content=b" " * (MAX_BODY_BYTES + 1)), 413)


def test_good_requests_at_the_bounds(served) -> None:
    c, _ = served
    # max_tokens exactly the context left; an integral float; a 64-bit seed at both ends; -1 top_k (vLLM)
    r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": CTX - 1})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == CTX - 1
    assert r.json()["choices"][0]["finish_reason"] == "length"
    r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3.0, "model": "tiny", "stream": False})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    for seed in (2**64 - 1, -(2**63)):
        body = {"prompt": "x", "max_tokens": 2, "temperature": 0.7, "top_k": -1, "top_p": 0.9, "seed": seed}
        assert c.post("/v1/completions", json=body).status_code == 200
    # the model as it was loaded is an alias; a tiny temperature is greedy, not an overflow
    r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "model": "test:tiny",
                                        "temperature": 1e-300})
    assert r.status_code == 200 and r.json()["model"] == "tiny"
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}], "max_completion_tokens": 2,
        "max_tokens": 10**30})  # max_completion_tokens wins, as in OpenAI's API
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    # absent max_tokens: 16, or what the context leaves
    r = c.post("/v1/completions", json={"prompt": "x" * (CTX - 5)})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    r = c.post("/v1/completions", json={"prompt": "x", "stream": None, "seed": None, "model": None})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16
    # stream: true (a JSON boolean) streams
    with c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 2, "stream": True}) as s:
        lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) == 4


def test_api_key() -> None:
    eng = _engine(max_batch=1)
    sched = Scheduler(eng, None)
    sched.start()
    try:
        app = build_app(eng, sched, ServeMetrics("tiny"), "tiny", api_key="s3cret")
        with TestClient(app) as c:
            body = {"prompt": "x", "max_tokens": 1}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                            {"Authorization": "Basic s3cret"}):
                r = c.post("/v1/completions", json=body, headers=headers)
                assert _assert_error(r, 401)["code"] == "invalid_api_key"
                assert r.headers["www-authenticate"] == "Bearer"
                assert c.get("/v1/models", headers=headers).status_code == 401
            ok = {"Authorization": "Bearer s3cret"}
            assert c.post("/v1/completions", json=body, headers=ok).status_code == 200
            assert c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                        "max_tokens": 1}, headers=ok).status_code == 200
            assert c.get("/v1/models", headers=ok).json()["data"][0]["id"] == "tiny"
            # probes and scrapers need no key (as in vLLM)
            assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200
    finally:
        sched.stop()


def test_parse_json_rejects_non_finite() -> None:
    assert parse_json(b'{"a": 1.5, "b": [1, 2]}') == {"a": 1.5, "b": [1, 2]}
    for raw in (b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e999}', b'{"a": -1e999}'):
        with pytest.raises(Exception, match="JSON") as e:
            parse_json(raw)
        assert type(e.value).__name__ == "BadRequest"


# -- the scheduler: a request can never fail another one ---------------------------------------------


class _Client:
    """The HTTP layer's side of a request: collects what the scheduler hands its sink."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.end: tuple[str, object] | None = None
        self.done = threading.Event()

    def __call__(self, kind: str, payload: object) -> None:
        if kind == "token":
            self.tokens.append(payload[0])
        else:
            self.end = (kind, payload)
            self.done.set()


def _solo(eng: Engine, ids: list[int], n: int) -> list[int]:
    return eng.generate([ids], n, chat=False)[0].token_ids


def _same_batch(sched: Scheduler, *reqs: Request) -> None:
    """Submit while the scheduler waits for companions, so they all land in one batch."""
    for r in reqs:
        sched.submit(r)
    sched.start()


def test_poison_request_does_not_fail_its_batch_mate() -> None:
    eng = _engine(max_batch=2)
    normal_ids = [5, 6, 7]
    want = _solo(eng, normal_ids, 6)
    sched = Scheduler(eng, ServeMetrics("tiny"), max_batch=2, gather_s=0.5)
    good, bad = _Client(), _Client()
    # an out-of-vocabulary id gets past submit (only the engine knows its vocabulary) and makes
    # Engine.generate raise for the whole batch
    poison = Request([3, VOCAB + 1000], 6, SamplingParams(), bad)
    normal = Request(normal_ids, 6, SamplingParams(), good)
    _same_batch(sched, poison, normal)
    try:
        assert good.done.wait(60) and bad.done.wait(60)
    finally:
        sched.stop()
    assert sched.batches == 1  # they were taken as one batch
    assert good.end == ("done", "length") and good.tokens == want
    assert bad.end[0] == "error" and "vocabulary" in bad.end[1] and poison.error_status == 400
    assert normal.finish_reason == "length" and poison.finish_reason == "error"


def test_broken_sink_does_not_fail_its_batch_mate() -> None:
    eng = _engine(max_batch=2)
    want = _solo(eng, [9, 8], 5)
    sched = Scheduler(eng, None, max_batch=2, gather_s=0.5)

    def broken(kind: str, payload: object) -> None:
        raise RuntimeError("client side broke")

    good = _Client()
    bad_req = Request([9, 8, 7, 6], 5, SamplingParams(), broken)
    ok_req = Request([9, 8], 5, SamplingParams(), good)
    _same_batch(sched, bad_req, ok_req)
    try:
        assert good.done.wait(60)
    finally:
        sched.stop()
    assert sched.batches == 1
    assert good.end == ("done", "length") and good.tokens == want
    assert bad_req.finish_reason == "abort" and bad_req.token_ids == [bad_req.token_ids[0]]
    assert "sink failed" in (bad_req.abort_reason or "")


def test_huge_max_tokens_is_clamped_not_an_overflow() -> None:
    eng = _engine(max_batch=2)
    sched = Scheduler(eng, None, max_batch=2, gather_s=0.5)
    a, b = _Client(), _Client()
    huge = Request([1, 2, 3], 10**20, SamplingParams(), a)  # what `max_tokens: 1e20` used to become
    normal = Request([4, 5], 4, SamplingParams(), b)
    _same_batch(sched, huge, normal)
    try:
        assert a.done.wait(60) and b.done.wait(60)
    finally:
        sched.stop()
    assert sched.batches == 1 and b.end == ("done", "length") and len(b.tokens) == 4
    assert a.end == ("done", "length") and len(a.tokens) == CTX - 3 + 1  # stopped by the context
    with pytest.raises(LlmtopError):
        sched.submit(Request([1], 4, SamplingParams(temperature=float("nan")), a))


def test_cancel_stops_the_row_within_one_step() -> None:
    eng = _engine(max_batch=2)
    sched = Scheduler(eng, ServeMetrics("tiny"), max_batch=2, gather_s=0.0)
    stop_at = 3
    got: list[int] = []
    end: list[object] = []
    done = threading.Event()

    def sink(kind: str, payload: object) -> None:  # runs on the scheduler thread, between engine steps
        if kind == "token":
            got.append(payload[0])
            if len(got) == stop_at:
                req.cancel("client disconnected")
        else:
            end.append(payload)
            done.set()

    req = Request([1, 2], CTX, SamplingParams(), sink)
    steps_before = eng._step
    sched.start()
    sched.submit(req)
    try:
        assert done.wait(60)
    finally:
        sched.stop()
    # cancelled during step 3's callback: no step after it (a cancel from another thread, mid-step, lets
    # that step finish and drops its token: at most one more step)
    assert end == ["abort"] and len(got) == stop_at and req.abort_reason == "client disconnected"
    assert eng._step - steps_before == stop_at
    assert sched.aborted == 1


def test_abort_all_answers_running_and_waiting() -> None:
    eng = _engine(max_batch=1)
    metrics = ServeMetrics("tiny")
    sched = Scheduler(eng, metrics, max_batch=1, gather_s=0.0)
    first, second = _Client(), _Client()
    started, release = threading.Event(), threading.Event()

    def slow(kind: str, payload: object) -> None:  # holds the engine between two steps
        first(kind, payload)
        if kind == "token" and len(first.tokens) == 1:
            started.set()
            release.wait(10)

    sched.start()
    running = Request([1, 2], CTX - 2, SamplingParams(), slow)
    sched.submit(running)
    assert started.wait(30)
    sched.submit(Request([3], 8, SamplingParams(), second))  # waits: max_batch 1
    assert sched.in_flight == 2
    assert sched.abort_all("shutdown") == 2
    release.set()
    assert first.done.wait(30) and second.done.wait(30)
    assert first.end == ("done", "abort") and len(first.tokens) == 1
    assert second.end == ("done", "abort") and second.tokens == []
    with pytest.raises(LlmtopError, match="shutting down"):
        sched.submit(Request([3], 8, SamplingParams(), _Client()))
    sched.stop()
    assert sched.in_flight == 0 and sched.aborted == 2
    sample = 'vllm:request_success_total{finished_reason="abort",model_name="tiny"} 2.0'
    assert sample in metrics.render().decode()
