"""The agent's wire format: a versioned, length-prefixed binary stream (no pickle).

Connection:
  viewer -> agent  HELLO   = MAGIC, u16 version, u16 token length, token bytes (utf-8)
  agent  -> viewer WELCOME = MAGIC, u16 version, u8 status, i64 agent clock (perf_counter_ns),
                             u16 message length, message (utf-8)
Then the agent sends frames (SOURCE, BATCH, STATUS, COUNTER), each `u32 payload length, u8 type,
payload`. The frames and the batch payload are the shared codec in llmtop.codec (the engine worker's
pipe and the recordings use it too); this module adds the handshake and re-exports the frame API, so
`wire.encode_batch`, `wire.FrameReader`, `wire.WireError`, ... keep working.
"""

from __future__ import annotations

import socket
import struct

from llmtop.codec import (
    BATCH,
    COUNTER,
    END,
    FRAME_TYPES,
    MARKER,
    MAX_FRAME,
    NOTE,
    OUTPUT,
    SOURCE,
    STATUS,
    CodecError,
    FrameReader,
    batch_frame,
    decode_batch,
    decode_json,
    encode_batch,
    encode_batch_body,
    frame,
    json_frame,
    read_frame,
    read_stream_frame,
    recv_exact,
)

__all__ = [
    "BAD_TOKEN",
    "BAD_VERSION",
    "BATCH",
    "COUNTER",
    "END",
    "FRAME_TYPES",
    "MAGIC",
    "MARKER",
    "MAX_FRAME",
    "MAX_TOKEN",
    "NOTE",
    "OK",
    "OUTPUT",
    "SOURCE",
    "STATUS",
    "VERSION",
    "FrameReader",
    "WireError",
    "batch_frame",
    "decode_batch",
    "decode_json",
    "encode_batch",
    "encode_batch_body",
    "encode_hello",
    "encode_welcome",
    "frame",
    "json_frame",
    "read_frame",
    "read_hello",
    "read_stream_frame",
    "read_welcome",
    "recv_exact",
]

MAGIC = b"LLMTOP\x00\x01"
VERSION = 2  # 2: step rows carry busy_ns / idle_ns (events.STEP_DTYPE); a version-1 peer is refused
MAX_TOKEN = 1024

OK, BAD_TOKEN, BAD_VERSION = 0, 1, 2

_HELLO = struct.Struct("<8sHH")
_WELCOME = struct.Struct("<8sHBqH")

# A malformed, oversized or unexpected message; the connection carrying it is closed.
WireError = CodecError


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
