"""Large JSON trace documents (plain or gzip) read with msgspec, in chunks of whole array elements.

`read_bytes(path)` is the file's document, decompressed in one call when it is one intact gzip member
(its size from the gzip trailer, so the output is allocated once) and by a streaming decompressor
otherwise (several members; a truncated or corrupt file keeps everything before the damage and says why).

`walk(doc, key, item, meta)` yields ("meta", {name: value}) and ("items", [element, ...]) for a JSON
object holding the array `key` among other keys, in any order and with any whitespace, or for a
bare top-level array (Chrome's Array form):

- fast path: msgspec decodes the object with `key` typed `msgspec.Raw` (a zero-copy view of the
  array's bytes; the other keys are skipped in C unless named in `meta`), which also proves the whole
  document valid. The array is then decoded a few MB at a time: a chunk ends at a `}` followed by
  `,` and `{` found by a regex, and msgspec decodes `[` + chunk + `]` into `item` values. That decode
  succeeds only if the cut is a true element boundary (JSON parses deterministically: a `}` inside a
  string or a nested value leaves `[` + chunk + `]` unbalanced, so a wrong cut never decodes), and a
  wrong guess is retried twice as far away: the failed attempts on a chunk cost at most twice the
  chunk that succeeds, so the whole walk is linear in the file size. The Array form has no upfront
  check: there a chunk that never decodes is damage, and the rest goes to the recovery path.
- recovery (a document msgspec rejects: truncated, corrupt, NaN literals, invalid UTF-8): the stdlib
  decoder walks the document value by value with `raw_decode` (each call reads only its own value,
  so the walk is linear too), hands the elements over in batches converted to `item`, and stops at
  the first value that does not parse; `status.truncated` then says so.

Floats reach `item` fields typed `Any` as their decimal text (`float_hook=str`), so callers convert
µs-with-ns-fraction timestamps to integer ns without float rounding.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec

CHUNK_BYTES = 2 << 20  # bytes of JSON decoded per chunk (bounds the live element objects)
FALLBACK_ITEMS = 20000  # elements per batch on the recovery path
_BOUNDARY = re.compile(rb"\}[ \t\r\n]*,[ \t\r\n]*\{")
_WS = b" \t\r\n"
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


@dataclass
class WalkStatus:
    """How a walk ended: `form` "object"/"array" ("" = not JSON), whether the array was found (and
    was an array), whether the document ended early or broke (`truncated`; `error` says where)."""

    form: str = ""
    found: bool = False
    not_a_list: bool = False
    truncated: bool = False
    recovered: bool = False  # the recovery path read (part of) the document
    error: str = ""


def read_bytes(path: Path) -> tuple[bytes, str | None]:
    """(document bytes, None) or (what decompressed before the damage, one-line reason)."""
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw, None
    if len(raw) >= 18:
        isize = struct.unpack("<I", raw[-4:])[0]  # uncompressed size mod 2**32 (of the last member)
        if len(raw) <= isize <= 1100 * len(raw):
            try:
                out = zlib.decompress(raw, 31, isize)
            except (zlib.error, MemoryError):
                pass
            else:
                if len(out) & 0xFFFFFFFF == isize:
                    return out, None
    return _gunzip_stream(raw)


def _gunzip_stream(raw: bytes) -> tuple[bytes, str | None]:
    """Every gzip member in turn; on damage, the output so far and why it stopped."""
    out: list[bytes] = []
    view = memoryview(raw)
    d = zlib.decompressobj(31)
    fed = False  # `d` has been given input
    error: str | None = None
    step = 1 << 20
    for at in range(0, len(raw), step):
        data: bytes | memoryview = view[at : at + step]
        while data:
            if d.eof:
                d, fed = zlib.decompressobj(31), False
            try:
                out.append(d.decompress(data))
            except zlib.error as e:
                # garbage after a complete member is left out quietly only when it is zero padding
                error = f"corrupt gzip data ({e})"
                if not fed and out and not any(bytes(data)):
                    error = None
                break
            fed = True
            data = d.unused_data if d.eof else b""
        if error is not None:
            break
    if error is None and fed and not d.eof:
        error = "compressed stream ends before its end marker (truncated .gz)"
    return b"".join(out), error


def _skip_ws(b: bytes | memoryview, i: int) -> int:
    n = len(b)
    while i < n and b[i] in _WS:
        i += 1
    return i


def walk(
    doc: bytes, key: str, item: Any, meta: tuple[str, ...], status: WalkStatus
) -> Iterator[tuple[str, Any]]:
    """Yield ("meta", {name: value}) and ("items", [item, ...]) from `doc`; see the module doc."""
    view = memoryview(doc)
    start = 3 if doc[:3] == _BOM else 0
    start = _skip_ws(view, start)
    first = doc[start : start + 1]
    chunk_dec = msgspec.json.Decoder(list[item], float_hook=str)
    if first == b"[":
        status.form = "array"
        status.found = True
        yield from _array(view[start:], chunk_dec, item, status, whole_doc=True)
        return
    if first != b"{":
        return
    status.form = "object"
    try:
        t = _top_decoder(key, meta).decode(view[start:])
    except msgspec.DecodeError:
        yield from _recover_object(view[start:], key, item, meta, status)
        return
    got = {m: getattr(t, m) for m in meta if m != key and getattr(t, m) is not msgspec.UNSET}
    if got:
        yield "meta", got
    arr = getattr(t, key)
    if arr is None:
        return
    body = memoryview(arr)
    if body[:1] != b"[":
        status.found = True
        status.not_a_list = True
        return
    status.found = True
    yield from _array(body, chunk_dec, item, status, whole_doc=False)


@lru_cache(maxsize=16)
def _top_decoder(key: str, meta: tuple[str, ...]) -> msgspec.json.Decoder:
    """The top-level object: `key` as a zero-copy Raw, the `meta` keys as Python values, the rest skipped."""
    fields = [(key, msgspec.Raw, None)] + [(m, Any, msgspec.UNSET) for m in meta if m != key]
    return msgspec.json.Decoder(msgspec.defstruct("Top", fields, gc=False), float_hook=str)


def _array(
    body: memoryview, dec: msgspec.json.Decoder, item: Any, status: WalkStatus, whole_doc: bool
) -> Iterator[tuple[str, Any]]:
    """The elements of the array that starts at body[0] ('['), a chunk at a time."""
    pos = _skip_ws(body, 1)
    n = len(body)
    search_from = pos + CHUNK_BYTES
    while pos < n:
        m = _BOUNDARY.search(body, search_from) if search_from < n else None
        if m is None:  # the rest, up to the array's closing bracket
            try:
                items = dec.decode(b"".join((b"[", body[pos:])))
            except msgspec.DecodeError:
                break
            if items:
                yield "items", items
            return
        try:
            items = dec.decode(b"".join((b"[", body[pos : m.start() + 1], b"]")))
        except msgspec.DecodeError:
            # the `}` was inside a string or a nested value: try twice as far, so that the attempts on
            # one chunk cost at most twice the bytes of the chunk that succeeds
            search_from = pos + 2 * (m.start() + 1 - pos)
            continue
        yield "items", items
        pos = m.end() - 1
        search_from = pos + CHUNK_BYTES
    # msgspec rejected what is left (damage, or too many misleading boundaries), or the array never
    # closed: value by value
    text = bytes(body[pos:]).decode("utf-8", errors="replace")
    status.recovered = True
    yield from _recover_items(text, 0, item, status, whole_doc=whole_doc)


def _recover_object(
    view: memoryview, key: str, item: Any, meta: tuple[str, ...], status: WalkStatus
) -> Iterator[tuple[str, Any]]:
    """The stdlib walk over a document msgspec rejected, key by key."""
    status.recovered = True
    text = bytes(view).decode("utf-8", errors="replace")
    dec = json.JSONDecoder(parse_float=str)
    i = 1
    n = len(text)
    while True:
        i = _skip_ws_text(text, i)
        if i >= n:
            status.truncated = True
            status.error = "the document ends inside its top-level object"
            return
        c = text[i]
        if c == "}":
            return
        if c == ",":
            i += 1
            continue
        try:
            k, i = dec.raw_decode(text, i)
            i = _skip_ws_text(text, i)
            if text[i : i + 1] != ":":
                raise json.JSONDecodeError("expected ':'", text, i)
            i = _skip_ws_text(text, i + 1)
            if k == key:
                status.found = True
                if text[i : i + 1] != "[":
                    status.not_a_list = True
                    return
                end = yield from _recover_items(text, i + 1, item, status, whole_doc=False)
                if end < 0:
                    return
                i = end
                continue
            v, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            status.truncated = True
            status.error = f"invalid JSON at char {e.pos}: {e.msg}"
            return
        if k in meta:
            yield "meta", {k: v}


def _skip_ws_text(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in " \t\r\n":
        i += 1
    return i


def _recover_items(
    text: str, i: int, item: Any, status: WalkStatus, whole_doc: bool
) -> Iterator[tuple[str, Any]]:
    """Elements from text[i] (just after '[' or a ',') to the closing ']'; returns the index after it,
    or -1 when the text ends or breaks first (status.truncated)."""
    dec = json.JSONDecoder(parse_float=str)
    batch: list[Any] = []
    n = len(text)
    end = -1
    while True:
        i = _skip_ws_text(text, i)
        if i >= n:
            status.truncated = True
            status.error = status.error or "the document ends inside the event array"
            break
        c = text[i]
        if c == "]":
            end = i + 1
            break
        if c == ",":
            i += 1
            continue
        try:
            v, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            status.truncated = True
            status.error = f"invalid JSON at char {e.pos}: {e.msg}"
            break
        batch.append(v)
        if len(batch) >= FALLBACK_ITEMS:
            yield "items", _convert(batch, item)
            batch = []
    if batch:
        yield "items", _convert(batch, item)
    if whole_doc and end >= 0 and _skip_ws_text(text, end) < n:
        status.error = status.error or "text after the top-level array was ignored"
    return end


def _convert(batch: list[Any], item: Any) -> list[Any]:
    try:
        return msgspec.convert(batch, list[item])
    except msgspec.ValidationError:  # one odd element: convert one at a time, keeping the rest
        out = []
        for v in batch:
            try:
                out.append(msgspec.convert(v, item))
            except msgspec.ValidationError:
                out.append(None)
        return out


__all__ = ["CHUNK_BYTES", "WalkStatus", "read_bytes", "walk"]
