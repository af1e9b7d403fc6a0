"""`llmtop serve`: OpenAI-style HTTP (Starlette on uvicorn) over the scheduler, the agent and /metrics.

Endpoints: POST /v1/completions, POST /v1/chat/completions (stream=true -> server-sent events, ending
with `data: [DONE]`), GET /v1/models, GET /health, GET /metrics (Prometheus text, vLLM names).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from llmtop.errors import LlmtopError
from llmtop.kernels.base import SamplingParams
from llmtop.kernels.factory import make_ops
from llmtop.serve.metrics import CONTENT_TYPE, ServeMetrics
from llmtop.serve.scheduler import Request, Scheduler

FINISH = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}


class BadRequest(Exception):
    pass


def _num(
    body: dict, key: str, default: Any, typ: type, lo: float | None = None, hi: float | None = None
) -> Any:
    v = body.get(key, default)
    if v is None:
        v = default
    if (typ is int and isinstance(v, bool)) or not isinstance(v, (int, float)):
        raise BadRequest(f"{key} must be a number")
    v = typ(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise BadRequest(f"{key} out of range: {v}")
    return v


def sampling_from(body: dict) -> SamplingParams:
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("seed must be an integer")
    top_p = _num(body, "top_p", 1.0, float, 0.0, 1.0)
    if top_p <= 0:
        raise BadRequest("top_p must be > 0")
    return SamplingParams(
        temperature=_num(body, "temperature", 0.0, float, 0.0, 100.0),
        top_k=_num(body, "top_k", 0, int, 0, None),
        top_p=top_p,
        seed=seed,
    )


def build_app(engine: Any, scheduler: Scheduler, metrics: ServeMetrics, model_name: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": msg, "type": "invalid_request_error", "code": status}}, status_code=status
        )

    def chat_ids(messages: Any) -> list[int]:
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        msgs = []
        for m in messages:
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("content"), str)
                or not isinstance(m.get("role"), str)
            ):
                raise BadRequest("each message needs string role and content")
            msgs.append({"role": m["role"], "content": m["content"]})
        tok = engine.tokenizer
        if tok is not None and getattr(engine.cfg, "chat_template", None):
            return list(tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True)))
        return engine.encode_prompt("\n".join(m["content"] for m in msgs), chat=False)

    async def handle(http: HttpRequest, chat: bool) -> Response:
        try:
            body = await http.json()
        except (ValueError, UnicodeDecodeError):
            return error(400, "body is not JSON")
        if not isinstance(body, dict):
            return error(400, "body must be a JSON object")
        try:
            if chat:
                prompt_ids = chat_ids(body.get("messages"))
                max_tokens = _num(body, "max_completion_tokens", body.get("max_tokens") or 16, int, 1, None)
            else:
                prompt = body.get("prompt")
                if isinstance(prompt, list) and len(prompt) == 1:
                    prompt = prompt[0]
                if not isinstance(prompt, str):
                    raise BadRequest("prompt must be a string")
                prompt_ids = engine.encode_prompt(prompt, chat=False)
                max_tokens = _num(body, "max_tokens", 16, int, 1, None)
            sampling = sampling_from(body)
            stream = bool(body.get("stream", False))
            include_usage = bool((body.get("stream_options") or {}).get("include_usage", False))
        except BadRequest as e:
            return error(400, str(e))

        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def sink(kind: str, payload: Any) -> None:  # scheduler thread -> event loop
            loop.call_soon_threadsafe(q.put_nowait, (kind, payload))

        req = Request(prompt_ids, max_tokens, sampling, sink)
        try:
            scheduler.submit(req)
        except LlmtopError as e:
            return error(503 if "overloaded" in str(e) else 400, str(e))
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"

        def usage() -> dict[str, int]:
            n = len(req.token_ids)
            return {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": n,
                "total_tokens": len(prompt_ids) + n,
            }

        def choice(text: str, finish: str | None, delta: bool) -> dict[str, Any]:
            if chat:
                key = "delta" if delta else "message"
                return {"index": 0, key: {"role": "assistant", "content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        if not stream:
            try:
                while True:
                    kind, payload = await q.get()
                    if kind == "error":
                        return error(500, payload)
                    if kind == "done":
                        break
            finally:
                req.cancelled = req.finish_reason is None
            return JSONResponse(
                {
                    "id": req.id,
                    "object": obj,
                    "created": created,
                    "model": model_name,
                    "choices": [choice(req.text, FINISH.get(payload, payload), False)],
                    "usage": usage(),
                }
            )

        async def events() -> Any:
            chunk_obj = obj + ".chunk" if chat else obj
            try:
                while True:
                    kind, payload = await q.get()
                    if kind == "token":
                        data = {
                            "id": req.id,
                            "object": chunk_obj,
                            "created": created,
                            "model": model_name,
                            "choices": [choice(payload[1], None, True)],
                        }
                    elif kind == "done":
                        data = {
                            "id": req.id,
                            "object": chunk_obj,
                            "created": created,
                            "model": model_name,
                            "choices": [choice("", FINISH.get(payload, payload), True)],
                        }
                        if include_usage:
                            data["usage"] = usage()
                    else:
                        data = {"error": {"message": payload, "type": "server_error"}}
                    yield f"data: {json.dumps(data)}\n\n"
                    if kind != "token":
                        break
                yield "data: [DONE]\n\n"
            finally:  # the client went away: stop generating for it
                if req.finish_reason is None:
                    req.cancelled = True

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def completions(http: HttpRequest) -> Response:
        return await handle(http, chat=False)

    async def chat_completions(http: HttpRequest) -> Response:
        return await handle(http, chat=True)

    async def models(http: HttpRequest) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": model_name,
                        "object": "model",
                        "owned_by": "llmtop",
                        "max_model_len": engine.max_context,
                    }
                ],
            }
        )

    async def health(http: HttpRequest) -> Response:
        if scheduler.error and scheduler.running == 0 and scheduler.batches == 0:
            return error(503, scheduler.error)
        return Response("ok")

    async def prom(http: HttpRequest) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", prom, methods=["GET"]),
        ]
    )


def run_server(
    backend: str = "cpu",
    model: str = "default",
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_batch: int = 8,
    agent_addr: str | None = None,
    agent_token: str | None = None,
    threads: int | None = None,
    max_context: int | None = None,
    model_name: str | None = None,
    log_level: str = "warning",
) -> int:
    """Load the model, start scheduler + agent, serve HTTP until SIGINT/SIGTERM. Returns an exit code."""
    import os

    import uvicorn

    import llmtop.agent as agent_mod
    from llmtop.model.engine import Engine
    from llmtop.model.loader import load_model

    if not 0 <= port <= 65535:
        raise LlmtopError(f"bad port {port}")
    if max_batch < 1:
        raise LlmtopError(f"--max-batch must be >= 1, got {max_batch}")
    _check_port(host, port)  # fail before the (slow) model load, with one line instead of uvicorn's log
    loaded = load_model(model)
    engine = Engine(loaded, make_ops(backend, threads=threads), max_batch=max_batch, max_context=max_context)
    name = model_name or getattr(loaded.config, "name", "") or str(model)
    # The agent is on by default (127.0.0.1:7070, or $LLMTOP_AGENT); "off" disables it.
    agent_addr = agent_addr or os.environ.get(agent_mod.ENV_ADDR) or agent_mod.DEFAULT_ADDR
    agent = None
    if agent_addr.lower() not in ("off", "none", "no", "0"):
        token = agent_token or os.environ.get(agent_mod.ENV_TOKEN) or None
        agent = agent_mod.start(agent_addr, token, engine=engine)
    if agent is not None:
        src = agent.source
        src.extra["serve"] = f"http://{host}:{port}"
        agent.set_source(src)
    metrics = ServeMetrics(name)
    sched = Scheduler(engine, metrics, max_batch=max_batch, agent=agent)
    sched.start()
    app = build_app(engine, sched, metrics, name)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    agent_note = f", agent on llmtop://{agent.address}" if agent is not None else ""
    print(
        f"llmtop serve: {name} on http://{host}:{port} ({backend}, max batch {max_batch}){agent_note}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run()
    finally:
        sched.stop()
        if agent is not None:
            agent.close()
    return 0 if server.started else 1


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise LlmtopError(f"cannot resolve --host {host}: {e}") from None
    fam, _, _, _, addr = infos[0]
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise LlmtopError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="cpu", help="cpu, cuda or wgpu (default cpu)")
    p.add_argument("--model", default="default", help="model spec (default: the shipped SmolLM2)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-context", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument(
        "--agent",
        default=None,
        metavar="HOST:PORT",
        help="llmtop agent address (default: $LLMTOP_AGENT or 127.0.0.1:7070; off to disable)",
    )
    p.add_argument("--agent-token", default=None, help="shared token (default: $LLMTOP_AGENT_TOKEN)")
    p.add_argument("--log-level", default="warning")


def serve_main(args: argparse.Namespace) -> int:
    """Entry point for `llmtop serve` (args from add_serve_arguments). Raises LlmtopError on bad input."""
    import os

    token = args.agent_token or os.environ.get("LLMTOP_AGENT_TOKEN") or None
    return run_server(
        args.backend,
        args.model,
        args.host,
        args.port,
        max_batch=args.max_batch,
        agent_addr=args.agent,
        agent_token=token,
        threads=args.threads,
        max_context=args.max_context,
        model_name=args.served_model_name,
        log_level=args.log_level,
    )
