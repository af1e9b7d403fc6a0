"""`llmtop serve`'s HTTP side: OpenAI-style routes (Starlette) over the scheduler.

Endpoints: POST /v1/completions, POST /v1/chat/completions (stream=true -> server-sent events, ending
with `data: [DONE]`), GET /v1/models, GET /health, GET /metrics (vLLM names and llmtop's own llmtop_*;
Prometheus text, or OpenMetrics when the scraper asks for it).

Every field is validated before anything is queued (`validate.py`); a refused request gets a 400, 401, 404,
413 or 503 with OpenAI's error body `{"error": {"message", "type", "param", "code"}}` and leaves no
traceback in the log. With an API key, the /v1 routes need `Authorization: Bearer KEY` (as in vLLM; /health
and /metrics stay open for probes and scrapers). A client that disconnects, streaming or not, has its
request cancelled: the scheduler drops its row at the engine's next step. The process side (arguments,
signals, the agent) is `server.py`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Iterable
from typing import Any

from llmtop.errors import LlmtopError
from llmtop.serve.metrics import ServeMetrics
from llmtop.serve.scheduler import Overloaded, Request, Scheduler, ShuttingDown
from llmtop.serve.validate import (
    MAX_BODY_BYTES,
    BadRequest,
    chat_messages,
    check_model,
    check_n,
    error_body,
    max_tokens_from,
    parse_json,
    prompt_text,
    sampling_from,
    stream_flags,
)

FINISH = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}

__all__ = ["BadRequest", "build_app"]


def build_app(
    engine: Any,
    scheduler: Scheduler,
    metrics: ServeMetrics,
    model_name: str,
    *,
    api_key: str | None = None,
    aliases: Iterable[str] = (),
) -> Any:
    """The Starlette app. `model_name` is what /v1/models lists and responses carry; requests may name it
    or one of `aliases` (any other model is a 404). `api_key`: required as a bearer token on /v1."""
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send

    names = frozenset({model_name, *aliases})
    key = api_key.encode("utf-8") if api_key else None

    def error(status: int, msg: str, param: str | None = None, code: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(msg, status, param, code), status_code=status, headers=headers)

    def unauthorized(http: HttpRequest) -> Response | None:
        if key is None:
            return None
        scheme, _, given = http.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "replace"), key):
            return None
        return error(401, "Incorrect API key provided: send it as `Authorization: Bearer KEY`.", None,
                     "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def read_body(http: HttpRequest) -> bytes:
        declared = http.headers.get("content-length", "")
        too_large = BadRequest(f"request body over {MAX_BODY_BYTES} bytes", None, "request_too_large", 413)
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise too_large
        chunks, size = [], 0
        async for chunk in http.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def tokenize(make: Any, param: str) -> list[int]:
        """The prompt's token ids; a tokenizer or chat template that chokes on the input is a 400."""
        try:
            ids = list(make())
        except BadRequest:
            raise
        except Exception as e:  # jinja TemplateError (roles must alternate), lone surrogates, ...
            raise BadRequest(f"cannot build the prompt: {type(e).__name__}: {e}", param) from None
        if not ids:
            raise BadRequest("the prompt has no tokens", param)
        return ids

    def chat_ids(msgs: list[dict[str, str]]) -> list[int]:
        tok = engine.tokenizer
        if tok is not None and getattr(engine.cfg, "chat_template", None):
            return list(tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True)))
        return engine.encode_prompt("\n".join(m["content"] for m in msgs), chat=False)

    def parse(body: dict, chat: bool) -> tuple[list[int], int, Any, bool, bool]:
        check_model(body, names, model_name)
        check_n(body)
        stream, include_usage = stream_flags(body)
        sampling = sampling_from(body)
        if chat:
            msgs = chat_messages(body.get("messages"))
            prompt_ids = tokenize(lambda: chat_ids(msgs), "messages")
        else:
            prompt = prompt_text(body)
            prompt_ids = tokenize(lambda: engine.encode_prompt(prompt, chat=False), "prompt")
        max_tokens = max_tokens_from(body, chat, len(prompt_ids), engine.max_context)
        return prompt_ids, max_tokens, sampling, stream, include_usage

    class _RequestStream(StreamingResponse):
        """Server-sent events that cancel their request however the response ends (the client went away
        mid-stream, the send failed, the server cancelled the task)."""

        def __init__(self, req: Request, content: Any) -> None:
            super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            self.req = req

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                if self.req.finish_reason is None:
                    self.req.cancel("client disconnected")

    async def handle(http: HttpRequest, chat: bool) -> Response:
        denied = unauthorized(http)
        if denied is not None:
            return denied
        try:
            body = parse_json(await read_body(http))
            prompt_ids, max_tokens, sampling, stream, include_usage = parse(body, chat)
        except BadRequest as e:
            return error(e.status, e.message, e.param, e.code)
        except ClientDisconnect:  # gone while sending the body: nobody to answer
            return Response(status_code=400)

        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def sink(kind: str, payload: Any) -> None:  # scheduler thread -> event loop
            try:
                loop.call_soon_threadsafe(q.put_nowait, (kind, payload))
            except RuntimeError:  # the loop is closed: the server is going away
                req.cancel("server stopping")

        req = Request(prompt_ids, max_tokens, sampling, sink)
        try:
            scheduler.submit(req)
        except ShuttingDown as e:
            return error(503, str(e), None, "server_shutting_down")
        except Overloaded as e:
            return error(503, str(e), None, "server_overloaded")
        except LlmtopError as e:
            return error(400, str(e))
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
                key_ = "delta" if delta else "message"
                return {"index": 0, key_: {"role": "assistant", "content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        if not stream:
            outcome = await _until_done_or_gone(http, q, req)
            if outcome is None:  # the client went away; its request is cancelled, nobody reads this
                return Response(status_code=499)
            kind, payload = outcome
            if kind == "error":
                return error(req.error_status, payload, None, None)
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
                        data = error_body(payload, req.error_status)
                    yield f"data: {json.dumps(data)}\n\n"
                    if kind != "token":
                        break
                yield "data: [DONE]\n\n"
            finally:  # the client went away: stop generating for it
                if req.finish_reason is None:
                    req.cancel("client disconnected")

        return _RequestStream(req, events())

    async def completions(http: HttpRequest) -> Response:
        return await handle(http, chat=False)

    async def chat_completions(http: HttpRequest) -> Response:
        return await handle(http, chat=True)

    async def models(http: HttpRequest) -> Response:
        denied = unauthorized(http)
        if denied is not None:
            return denied
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
        from starlette.concurrency import run_in_threadpool

        # off the event loop: llmtop's families come from a snapshot (milliseconds, once a second)
        body, ctype = await run_in_threadpool(metrics.exposition, http.headers.get("accept"))
        return Response(body, headers={"Content-Type": ctype})

    return Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", prom, methods=["GET"]),
        ]
    )


async def _until_done_or_gone(http: Any, q: asyncio.Queue, req: Request) -> tuple[str, Any] | None:
    """Wait for the request's ("done" | "error", payload), or for its client to disconnect (-> None, and the
    request is cancelled). The body is read already, so the next ASGI message is the disconnect."""

    async def result() -> tuple[str, Any]:
        while True:
            kind, payload = await q.get()
            if kind in ("done", "error"):
                return kind, payload

    async def gone() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    getter, watcher = asyncio.ensure_future(result()), asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        getter.cancel()
        watcher.cancel()
        if req.finish_reason is None:  # the client went away, or this handler was cancelled
            req.cancel("client disconnected" if watcher.done() and not watcher.cancelled() else "cancelled")
    if getter in done:
        return getter.result()
    return None
