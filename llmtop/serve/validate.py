"""Request parsing and validation for `llmtop serve`: every field a client sends is checked against explicit
bounds here, before a request reaches the scheduler, and a bad one becomes a `BadRequest` that the HTTP layer
turns into a 400 (or 404, 413) with an OpenAI-style error body. Nothing in here raises anything else for any
input: a traceback in the server log is a server bug, never a client's mistake.

Bounds (the numbers are in the constants below):
- the body: JSON (NaN/Infinity literals, non-finite numbers such as 1e400 and nesting deeper than the
  parser's recursion limit are rejected), an object, at most MAX_BODY_BYTES;
- max_tokens / max_completion_tokens: an integer (an integral float such as 5.0 is accepted) from 1 to the
  context left after the prompt; when absent, min(16, the context left);
- temperature: finite, 0..MAX_TEMPERATURE (below GREEDY_BELOW counts as 0, greedy, as in vLLM); top_p: finite,
  0 < top_p <= 1; top_k: an integer, -1 (off, vLLM's spelling) or 0..MAX_TOP_K; seed: an integer that fits 64
  bits, signed or unsigned (a negative seed is taken modulo 2**64); n: 1;
- stream and stream_options.include_usage: JSON booleans only (`"false"` is a 400, not a stream);
- model: absent, null, or one of the served names; any other string is a 404 `model_not_found`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from llmtop.kernels.base import SamplingParams

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_TEMPERATURE = 100.0
GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS: smaller temperatures overflow exp(logit / T): greedy
MAX_TOP_K = 2**31 - 1
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
DEFAULT_MAX_TOKENS = 16


class BadRequest(Exception):
    """A request the server refuses: HTTP `status`, OpenAI error `code` and the offending `param`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "invalid_value",
                 status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:40]} is out of range")
    return v


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a dict, or BadRequest. Strict JSON: no NaN/Infinity, no non-finite numbers."""
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large", status=413)
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply", code="invalid_json") from None
    except ValueError as e:  # JSONDecodeError, our non-finite numbers, ints over Python's digit limit
        raise BadRequest(f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_type")
    return body


def _type_name(v: Any) -> str:
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object", float: "a number",
            int: "an integer"}.get(type(v), type(v).__name__)


def get_int(body: dict, key: str, default: int | None, lo: int, hi: int, *, hi_note: str = "") -> int | None:
    """An integer field in [lo, hi]; integral floats (5.0) are accepted, 5.5, booleans and strings are not."""
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRequest(f"{key} must be an integer, got {_type_name(v)}", key, "invalid_type")
    if isinstance(v, float):
        if not math.isfinite(v) or not v.is_integer():
            raise BadRequest(f"{key} must be an integer, got {v!r}", key, "invalid_type")
        v = int(v)
    if not lo <= v <= hi:
        shown = str(v) if len(str(v)) <= 30 else f"{str(v)[:12]}...({len(str(v))} digits)"
        raise BadRequest(f"{key} must be between {lo} and {hi}{hi_note}, got {shown}", key)
    return v


def get_float(body: dict, key: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi] with lo_open)."""
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRequest(f"{key} must be a number, got {_type_name(v)}", key, "invalid_type")
    try:
        f = float(v)
    except OverflowError:  # an int too large for a float
        raise BadRequest(f"{key} is out of range", key) from None
    if not math.isfinite(f):
        raise BadRequest(f"{key} must be a finite number", key)
    if f < lo or f > hi or (lo_open and f == lo):
        low = f"{lo} < " if lo_open else f"{lo} <= "
        raise BadRequest(f"{key} must be {low}{key} <= {hi}, got {f}", key)
    return f


def get_bool(body: dict, key: str, default: bool, where: str = "") -> bool:
    """A JSON boolean (or absent/null): "false", 0 and 1 are refused rather than guessed."""
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequest(f"{where}{key} must be a boolean, got {_type_name(v)}", where + key, "invalid_type")
    return v


def sampling_from(body: dict) -> SamplingParams:
    """temperature, top_p, top_k and seed, each within its bounds (see the module docstring)."""
    temperature = get_float(body, "temperature", 0.0, 0.0, MAX_TEMPERATURE)
    if temperature < GREEDY_BELOW:
        temperature = 0.0
    top_p = get_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    top_k = get_int(body, "top_k", 0, -1, MAX_TOP_K)
    seed = get_int(body, "seed", None, SEED_MIN, SEED_MAX)
    return SamplingParams(
        temperature=temperature,
        top_k=max(0, top_k or 0),
        top_p=top_p,
        seed=None if seed is None else seed % 2**64,  # numpy's default_rng takes non-negative seeds
    )


def check_model(body: dict, names: set[str] | frozenset[str], served: str) -> None:
    v = body.get("model")
    if v is None:
        return
    if not isinstance(v, str):
        raise BadRequest(f"model must be a string, got {_type_name(v)}", "model", "invalid_type")
    if v not in names:
        shown = v if len(v) <= 100 else v[:100] + "..."
        raise BadRequest(
            f"The model `{shown}` does not exist. This server serves `{served}`.",
            "model", "model_not_found", status=404,
        )


def check_n(body: dict) -> None:
    get_int(body, "n", 1, 1, 1, hi_note=" (this server returns one choice per request)")


def max_tokens_from(body: dict, chat: bool, prompt_len: int, context: int) -> int:
    """max_tokens (chat: max_completion_tokens first) bounded by the context left after the prompt."""
    left = context - prompt_len
    if left < 1:
        raise BadRequest(
            f"This model's maximum context length is {context} tokens; the prompt is {prompt_len} tokens, "
            "which leaves no room for a completion.",
            "messages" if chat else "prompt", "context_length_exceeded",
        )
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    note = f" (the context of {context} tokens minus the {prompt_len}-token prompt)"
    n = get_int(body, key, min(DEFAULT_MAX_TOKENS, left), 1, left, hi_note=note)
    assert n is not None
    return n


def stream_flags(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage): booleans only; stream_options must be an object (or null)."""
    stream = get_bool(body, "stream", False)
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not isinstance(opts, dict):
        raise BadRequest(f"stream_options must be an object, got {_type_name(opts)}", "stream_options",
                         "invalid_type")
    return stream, get_bool(opts, "include_usage", False, "stream_options.")


def prompt_text(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (or a list of one string)", "prompt", "invalid_type")
    return prompt


def chat_messages(messages: Any) -> list[dict[str, str]]:
    """[{"role", "content"}]: string roles; content a string or a list of {"type": "text", "text"} parts."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages", "invalid_type")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] needs a string role and content", f"messages[{i}]",
                             "invalid_type")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for p in content:
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise BadRequest(f"messages[{i}].content: only text parts are supported",
                                     f"messages[{i}].content", "invalid_type")
                parts.append(p["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}] needs a string role and content", f"messages[{i}]",
                             "invalid_type")
        out.append({"role": m["role"], "content": content})
    return out

