"""The agent's wire format: a versioned, length-prefixed binary stream (no pickle).

Connection:
  viewer -> agent  HELLO   = MAGIC, u16 version, u16 token length, token bytes (utf-8)
  agent  -> viewer WELCOME = MAGIC, u16 version, u8 status, i64 agent clock (perf_counter_ns),
                             u16 message length, message (utf-8)
Then the agent sends frames, each `u32 payload length, u8 type, payload`:
  SOURCE  JSON SourceInfo.to_dict()
  BATCH   u32 names_base, u32 n_names, u32 n_kernels, u32 n_steps, names (u16 length + utf-8 each),
          then the raw KERNEL_DTYPE and STEP_DTYPE bytes (little-endian, packed)
  STATUS  JSON {"dropped": events dropped for this viewer so far, "t_ns": agent clock}
  COUNTER JSON {"source", "t_ns", "values"}
The same frames carry the engine worker's stream to the live TUI (llmtop.collectors.engine_worker, over
the child's stdout, no handshake), which adds:
  MARKER  JSON {"t_ns", "text", "round", "prompt"}  a prompt round starts
  OUTPUT  JSON {"round", "generations": [{"text", "token_ids", "prompt_tokens", "finish_reason"}]}
  NOTE    JSON {"text"}  a one-line notice for the user (e.g. random weights)
  END     JSON {"error": one line or null, "rounds"}  the worker's last frame
Payloads above MAX_FRAME are refused on both sides, so a corrupt length can never make a reader
allocate gigabytes.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, BinaryIO

import numpy as np

from llmtop.events import KERNEL_DTYPE, STEP_DTYPE, EventBatch

MAGIC = b"LLMTOP\x00\x01"
VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
MAX_TOKEN = 1024

SOURCE, BATCH, STATUS, COUNTER = 1, 2, 3, 4
MARKER, OUTPUT, NOTE, END = 5, 6, 7, 8
FRAME_TYPES = (SOURCE, BATCH, STATUS, COUNTER, MARKER, OUTPUT, NOTE, END)

OK, BAD_TOKEN, BAD_VERSION = 0, 1, 2

_HELLO = struct.Struct("<8sHH")
_WELCOME = struct.Struct("<8sHBqH")
_FRAME = struct.Struct("<IB")
_BATCH = struct.Struct("<IIII")
_NAME = struct.Struct("<H")


class WireError(Exception):
    """A malformed, oversized or unexpected message; the connection carrying it is closed."""


# -- handshake -------------------------------------------------------------------------------
def encode_hello(token: str | None, version: int = VERSION) -> bytes:
    tok = (token or "").encode("utf-8")
    if len(tok) > MAX_TOKEN:
        raise WireError(f"token longer than {MAX_TOKEN} bytes")
    return _HELLO.pack(MAGIC, version, len(tok)) + tok


def read_hello(sock: socket.socket) -> tuple[int, bytes]:
    """(version, token bytes) from a viewer; WireError if it does not speak our protocol."""
    magic, version, n = _HELLO.unpack(recv_exact(sock, _HELLO.size))
    if magic != MAGIC:
        raise WireError("bad magic (not an llmtop viewer)")
    if n > MAX_TOKEN:
        raise WireError("token too long")
    return version, recv_exact(sock, n)


def encode_welcome(status: int, clock_ns: int, message: str = "") -> bytes:
    msg = message.encode("utf-8")[:1000]
    return _WELCOME.pack(MAGIC, VERSION, status, clock_ns, len(msg)) + msg


def read_welcome(sock: socket.socket) -> tuple[int, int, int, str]:
    """(version, status, agent clock ns, message)."""
    magic, version, status, clock, n = _WELCOME.unpack(recv_exact(sock, _WELCOME.size))
    if magic != MAGIC:
        raise WireError("bad magic (not an llmtop agent)")
    return version, status, clock, recv_exact(sock, n).decode("utf-8", "replace")


# -- frames ----------------------------------------------------------------------------------
def frame(ftype: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise WireError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME} byte limit")
    return _FRAME.pack(len(payload), ftype) + payload


def json_frame(ftype: int, obj: Any) -> bytes:
    return frame(ftype, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def encode_names(names: list[str]) -> bytes:
    out = bytearray()
    for n in names:
        b = n.encode("utf-8")
        if len(b) > 0xFFFF:
            b = b[:0xFFFF]
        out += _NAME.pack(len(b)) + b
    return bytes(out)


def encode_batch_body(kernels: np.ndarray, steps: np.ndarray) -> bytes:
    """The name-independent part of a BATCH frame, encoded once and shared by all viewers."""
    return (
        np.ascontiguousarray(kernels, KERNEL_DTYPE).tobytes()
        + np.ascontiguousarray(steps, STEP_DTYPE).tobytes()
    )


def batch_frame(names_base: int, names: list[str], n_kernels: int, n_steps: int, body: bytes) -> bytes:
    head = _BATCH.pack(names_base, len(names), n_kernels, n_steps)
    return frame(BATCH, head + encode_names(names) + body)


def encode_batch(batch: EventBatch) -> bytes:
    body = encode_batch_body(batch.kernels, batch.steps)
    return batch_frame(batch.names_base, batch.new_names, len(batch.kernels), len(batch.steps), body)


def decode_batch(payload: bytes) -> EventBatch:
    """Parse a BATCH payload, checking every length against the payload (WireError otherwise)."""
    if len(payload) < _BATCH.size:
        raise WireError("batch frame too short")
    base, n_names, n_k, n_s = _BATCH.unpack_from(payload, 0)
    off = _BATCH.size
    names: list[str] = []
    for _ in range(n_names):
        if off + _NAME.size > len(payload):
            raise WireError("batch frame truncated in its names")
        (n,) = _NAME.unpack_from(payload, off)
        off += _NAME.size
        if off + n > len(payload):
            raise WireError("batch frame truncated in its names")
        names.append(payload[off : off + n].decode("utf-8", "replace"))
        off += n
    need = n_k * KERNEL_DTYPE.itemsize + n_s * STEP_DTYPE.itemsize
    if len(payload) - off != need:
        raise WireError(f"batch frame has {len(payload) - off} array bytes, expected {need}")
    kb = n_k * KERNEL_DTYPE.itemsize
    kernels = np.frombuffer(payload, KERNEL_DTYPE, n_k, off).copy()
    steps = np.frombuffer(payload, STEP_DTYPE, n_s, off + kb).copy()
    return EventBatch(kernels, steps, base, names)


def decode_json(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError(f"bad JSON frame: {e}") from None
    if not isinstance(obj, dict):
        raise WireError("JSON frame is not an object")
    return obj


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, max_frame: int = MAX_FRAME) -> tuple[int, bytes]:
    length, ftype = _FRAME.unpack(recv_exact(sock, _FRAME.size))
    if length > max_frame:
        raise WireError(f"frame of {length} bytes exceeds the {max_frame} byte limit")
    if ftype not in FRAME_TYPES:
        raise WireError(f"unknown frame type {ftype}")
    return ftype, recv_exact(sock, length)


def read_stream_frame(f: BinaryIO, max_frame: int = MAX_FRAME) -> tuple[int, bytes] | None:
    """The next frame from a blocking byte stream (a pipe); None at a clean end between frames.

    A stream that ends inside a frame, or a bad header, raises WireError.
    """
    head = f.read(_FRAME.size)
    if not head:
        return None
    if len(head) < _FRAME.size:
        raise WireError("stream ended inside a frame header")
    length, ftype = _FRAME.unpack(head)
    if length > max_frame:
        raise WireError(f"frame of {length} bytes exceeds the {max_frame} byte limit")
    if ftype not in FRAME_TYPES:
        raise WireError(f"unknown frame type {ftype}")
    payload = f.read(length)
    if len(payload) < length:
        raise WireError(f"stream ended inside a frame ({len(payload)} of {length} bytes)")
    return ftype, payload


class FrameReader:
    """Frames from a socket with a read timeout: a timeout never loses the bytes of a half-read frame.

    `next()` returns (type, payload), or None when the timeout passed before a whole frame arrived.
    The header is checked as soon as it is in, so an oversized length is refused before its payload.
    """

    def __init__(self, sock: socket.socket, max_frame: int = MAX_FRAME) -> None:
        self.sock = sock
        self.max_frame = max_frame
        self.buf = bytearray()

    def next(self) -> tuple[int, bytes] | None:
        buf = self.buf
        while True:
            if len(buf) >= _FRAME.size:
                length, ftype = _FRAME.unpack_from(buf, 0)
                if length > self.max_frame:
                    raise WireError(f"frame of {length} bytes exceeds the {self.max_frame} byte limit")
                if ftype not in FRAME_TYPES:
                    raise WireError(f"unknown frame type {ftype}")
                end = _FRAME.size + length
                if len(buf) >= end:
                    payload = bytes(buf[_FRAME.size : end])
                    del buf[:end]
                    return ftype, payload
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("connection closed")
            buf += chunk
