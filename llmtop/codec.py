"""The one binary codec for EventBatches, and the length-prefixed frames that carry them.

Bottom layer (imports only `events`): the agent's wire (llmtop.agent.wire), the engine worker's pipe
(llmtop.collectors.engine_worker / engine_process) and the recording format (llmtop.traces.recording)
all encode and decode batches here.

Batch payload (little-endian):

    names_base  u32
    names_len   u32   NAMES_PACKED: how many names; NAMES_JSON: byte length of the JSON list (0 = none)
    n_kernels   u32
    n_steps     u32
    names       NAMES_PACKED: each u16 length + utf-8 (cut at 65535 bytes);
                NAMES_JSON: one compact JSON list of strings, absent when there are no names
    kernels     n_kernels raw KERNEL_DTYPE rows (packed)
    steps       n_steps raw STEP_DTYPE rows (packed)

The frames use NAMES_PACKED, recordings NAMES_JSON (both byte layouts are fixed: old files and peers
must keep reading). A decoder given the row layouts an older writer used converts the rows to the
current dtypes (common fields copied, new ones zero).

Frame: `u32 payload length, u8 type, payload`; payloads above MAX_FRAME are refused on both sides, so a
corrupt length can never make a reader allocate gigabytes. Types:
  SOURCE  JSON SourceInfo.to_dict()
  BATCH   a batch payload (NAMES_PACKED)
  STATUS  JSON {"dropped": events dropped for this viewer so far, "t_ns": agent clock} (agent),
          JSON {"t_ns", "cpu_s"} (engine worker)
  COUNTER JSON {"source", "t_ns", "values"}
  MARKER  JSON {"t_ns", "text", "round", "prompt"}  a prompt round starts
  OUTPUT  JSON {"round", "generations": [{"text", "token_ids", "prompt_tokens", "finish_reason"}]}
  NOTE    JSON {"text"}  a one-line notice for the user (e.g. random weights)
  END     JSON {"error": one line or null, "rounds"}  the engine worker's last frame
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, BinaryIO, Literal

import numpy as np

from llmtop.events import KERNEL_DTYPE, STEP_DTYPE, EventBatch

__all__ = [
    "BATCH",
    "BATCH_HEAD",
    "COUNTER",
    "END",
    "FRAME_HEAD",
    "FRAME_TYPES",
    "MARKER",
    "MAX_FRAME",
    "NAMES_JSON",
    "NAMES_PACKED",
    "NOTE",
    "OUTPUT",
    "SOURCE",
    "STATUS",
    "CodecError",
    "FrameReader",
    "NameEncoding",
    "batch_frame",
    "batch_payload",
    "convert_rows",
    "decode_batch",
    "decode_batch_payload",
    "decode_json",
    "encode_batch",
    "encode_batch_body",
    "encode_batch_payload",
    "frame",
    "json_frame",
    "read_frame",
    "read_stream_frame",
    "recv_exact",
]


class CodecError(Exception):
    """Malformed, oversized or unexpected bytes (a frame, or a batch payload); one line."""


# -- batch payload ---------------------------------------------------------------------------
NameEncoding = Literal["packed", "json"]
NAMES_PACKED: NameEncoding = "packed"  # frames: the header counts the names, each u16 length + utf-8
NAMES_JSON: NameEncoding = "json"  # recordings: the header holds the byte length of one JSON list

BATCH_HEAD = struct.Struct("<IIII")  # names_base, names_len, n_kernels, n_steps
_NAME_LEN = struct.Struct("<H")


def _encode_names(names: list[str], encoding: NameEncoding) -> tuple[int, bytes]:
    """(the header's names_len field, the encoded names)."""
    if encoding == NAMES_JSON:
        b = json.dumps(names, separators=(",", ":")).encode() if names else b""
        return len(b), b
    out = bytearray()
    for n in names:
        raw = n.encode("utf-8")[:0xFFFF]
        out += _NAME_LEN.pack(len(raw)) + raw
    return len(names), bytes(out)


def _decode_names(payload: bytes, off: int, names_len: int, encoding: NameEncoding) -> tuple[list[str], int]:
    """(names, offset after them); CodecError when they run past the payload or do not parse."""
    if encoding == NAMES_JSON:
        if not names_len:
            return [], off
        if off + names_len > len(payload):
            raise CodecError("batch truncated in its names")
        try:
            names = json.loads(payload[off : off + names_len])
        except (UnicodeDecodeError, ValueError) as e:
            raise CodecError(f"batch names are not JSON: {e}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CodecError("batch names are not a list of strings")
        return names, off + names_len
    names = []
    for _ in range(names_len):
        if off + _NAME_LEN.size > len(payload):
            raise CodecError("batch truncated in its names")
        (n,) = _NAME_LEN.unpack_from(payload, off)
        off += _NAME_LEN.size
        if off + n > len(payload):
            raise CodecError("batch truncated in its names")
        names.append(payload[off : off + n].decode("utf-8", "replace"))
        off += n
    return names, off


def encode_batch_body(kernels: np.ndarray, steps: np.ndarray) -> bytes:
    """The rows of a batch payload: the name-independent part (the agent encodes it once per batch)."""
    return (
        np.ascontiguousarray(kernels, KERNEL_DTYPE).tobytes()
        + np.ascontiguousarray(steps, STEP_DTYPE).tobytes()
    )


def batch_payload(names_base: int, names: list[str], n_kernels: int, n_steps: int, body: bytes,
                  encoding: NameEncoding = NAMES_PACKED) -> bytes:
    """A batch payload from its parts; `body` is `encode_batch_body(kernels, steps)`."""
    names_len, encoded = _encode_names(names, encoding)
    return BATCH_HEAD.pack(names_base, names_len, n_kernels, n_steps) + encoded + body


def encode_batch_payload(batch: EventBatch, encoding: NameEncoding = NAMES_PACKED) -> bytes:
    body = encode_batch_body(batch.kernels, batch.steps)
    return batch_payload(batch.names_base, batch.new_names, len(batch.kernels), len(batch.steps), body,
                         encoding)


def convert_rows(raw: np.ndarray, target: np.dtype) -> np.ndarray:
    """Rows written with an older layout -> the current one (common fields copied, new ones zero)."""
    if raw.dtype == target:
        return raw
    out = np.zeros(len(raw), dtype=target)
    for name in target.names or ():
        if raw.dtype.names and name in raw.dtype.names:
            out[name] = raw[name]
    return out


def decode_batch_payload(payload: bytes, encoding: NameEncoding = NAMES_PACKED, *,
                         kernel_dtype: np.dtype = KERNEL_DTYPE,
                         step_dtype: np.dtype = STEP_DTYPE) -> EventBatch:
    """Parse a batch payload, checking every length against it (CodecError otherwise).

    kernel_dtype / step_dtype: the row layouts the writer used (a recording's header names them);
    the rows come back in the current KERNEL_DTYPE / STEP_DTYPE.
    """
    if len(payload) < BATCH_HEAD.size:
        raise CodecError("batch too short")
    base, names_len, n_k, n_s = BATCH_HEAD.unpack_from(payload, 0)
    names, off = _decode_names(payload, BATCH_HEAD.size, names_len, encoding)
    kb = n_k * kernel_dtype.itemsize
    need = kb + n_s * step_dtype.itemsize
    if len(payload) - off != need:
        raise CodecError(f"batch has {len(payload) - off} row bytes, its row counts need {need}")
    kernels = np.frombuffer(payload, kernel_dtype, n_k, off).copy()
    steps = np.frombuffer(payload, step_dtype, n_s, off + kb).copy()
    return EventBatch(convert_rows(kernels, KERNEL_DTYPE), convert_rows(steps, STEP_DTYPE), base, names)


# -- frames ----------------------------------------------------------------------------------
MAX_FRAME = 64 * 1024 * 1024

SOURCE, BATCH, STATUS, COUNTER = 1, 2, 3, 4
MARKER, OUTPUT, NOTE, END = 5, 6, 7, 8
FRAME_TYPES = (SOURCE, BATCH, STATUS, COUNTER, MARKER, OUTPUT, NOTE, END)

FRAME_HEAD = struct.Struct("<IB")  # payload length, type


def frame(ftype: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise CodecError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME} byte limit")
    return FRAME_HEAD.pack(len(payload), ftype) + payload


def json_frame(ftype: int, obj: Any) -> bytes:
    return frame(ftype, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def batch_frame(names_base: int, names: list[str], n_kernels: int, n_steps: int, body: bytes) -> bytes:
    """A BATCH frame from a shared `encode_batch_body` (the agent sends one body to every viewer)."""
    return frame(BATCH, batch_payload(names_base, names, n_kernels, n_steps, body, NAMES_PACKED))


def encode_batch(batch: EventBatch) -> bytes:
    """A whole BATCH frame."""
    return frame(BATCH, encode_batch_payload(batch, NAMES_PACKED))


def decode_batch(payload: bytes) -> EventBatch:
    """A BATCH frame's payload -> EventBatch (CodecError when malformed)."""
    return decode_batch_payload(payload, NAMES_PACKED)


def decode_json(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CodecError(f"bad JSON frame: {e}") from None
    if not isinstance(obj, dict):
        raise CodecError("JSON frame is not an object")
    return obj


def _check_head(length: int, ftype: int, max_frame: int) -> None:
    if length > max_frame:
        raise CodecError(f"frame of {length} bytes exceeds the {max_frame} byte limit")
    if ftype not in FRAME_TYPES:
        raise CodecError(f"unknown frame type {ftype}")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, max_frame: int = MAX_FRAME) -> tuple[int, bytes]:
    length, ftype = FRAME_HEAD.unpack(recv_exact(sock, FRAME_HEAD.size))
    _check_head(length, ftype, max_frame)
    return ftype, recv_exact(sock, length)


def read_stream_frame(f: BinaryIO, max_frame: int = MAX_FRAME) -> tuple[int, bytes] | None:
    """The next frame from a blocking byte stream (a pipe); None at a clean end between frames.

    A stream that ends inside a frame, or a bad header, raises CodecError.
    """
    head = f.read(FRAME_HEAD.size)
    if not head:
        return None
    if len(head) < FRAME_HEAD.size:
        raise CodecError("stream ended inside a frame header")
    length, ftype = FRAME_HEAD.unpack(head)
    _check_head(length, ftype, max_frame)
    payload = f.read(length)
    if len(payload) < length:
        raise CodecError(f"stream ended inside a frame ({len(payload)} of {length} bytes)")
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
            if len(buf) >= FRAME_HEAD.size:
                length, ftype = FRAME_HEAD.unpack_from(buf, 0)
                _check_head(length, ftype, self.max_frame)
                end = FRAME_HEAD.size + length
                if len(buf) >= end:
                    payload = bytes(buf[FRAME_HEAD.size : end])
                    del buf[:end]
                    return ftype, payload
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("connection closed")
            buf += chunk
