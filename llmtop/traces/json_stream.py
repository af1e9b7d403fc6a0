"""Large JSON trace documents (plain or gzip) read with msgspec, in chunks of whole array elements.

`read_bytes(path)` is the file's document, decompressed into one buffer of the size the gzip trailer
gives when it is one intact member (allocated once, never written past), and by a streaming decompressor
otherwise (several members; a truncated or corrupt file keeps everything before the damage and says why).
Both stop as soon as the output would pass the limit in force (registry.ReadLimits: `--max-bytes`, by
default 8 GiB and 200 times the compressed size beyond 64 MiB) and raise LlmtopError naming that limit;
a plain file over the size limit is refused before it is read.

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
- recovery (a document msgspec rejects: truncated, corrupt, NaN literals, invalid UTF-8, a value
  nested deeper than its ~1000 levels, an integer of thousands of digits): the stdlib decoder walks the
  document value by value with `raw_decode` (each call reads only its own value, so the walk is linear
  too), hands the elements over in batches converted to `item`, and stops at the first value that does
  not parse; `status.truncated` then says so. An element nested too deep for the stdlib decoder as well
  is stepped over without recursion (`_skip_value`) and counted in `status.too_deep`; the walk goes on
  after it. Integers too long for int() arrive as their digits (a time that long is out of range).

Floats reach `item` fields typed `Any` as their decimal text (`float_hook=str`), so callers convert
µs-with-ns-fraction timestamps to integer ns without float rounding.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec

from llmtop.errors import LlmtopError
from llmtop.traces.registry import ReadLimits, read_limits

CHUNK_BYTES = 2 << 20  # bytes of JSON decoded per chunk (bounds the live element objects)
FALLBACK_ITEMS = 20000  # elements per batch on the recovery path
_BOUNDARY = re.compile(rb"\}[ \t\r\n]*,[ \t\r\n]*\{")
_NOT_WS = re.compile(rb"[^ \t\r\n]")
_NOT_WS_TEXT = re.compile(r"[^ \t\r\n]")
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_EXACT_STEP = 1 << 18  # output bytes per call when decompressing into a buffer of known size
_STREAM_STEP = 1 << 22  # output bytes per call otherwise


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
    too_deep: int = 0  # elements left out because they nest deeper than the decoders go (~1000 levels)


def read_bytes(path: Path, limits: ReadLimits | None = None) -> tuple[bytes | bytearray, str | None]:
    """(document bytes, None) or (what decompressed before the damage, one-line reason).

    Bounded by `limits` (default: registry.read_limits(), what --max-bytes set): a plain file larger than
    the size limit, or a compressed one that expands past its limit (size or ratio), raises LlmtopError
    saying which limit it hit, after decompressing at most that much."""
    lim = limits if limits is not None else read_limits()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        gzipped = f.read(2) == _GZIP_MAGIC
        if not gzipped:
            why = lim.plain_too_large(path, size)
            if why is not None:
                raise LlmtopError(why)
        f.seek(0)
        raw = f.read()
    if not gzipped:
        return raw, None
    cap = lim.allowed(len(raw))
    if len(raw) >= 18:
        isize = struct.unpack("<I", raw[-4:])[0]  # uncompressed size mod 2**32 (of the last member)
        if len(raw) <= isize <= cap:
            out = _gunzip_exact(raw, isize)
            if out is not None:
                return out, None
    return _gunzip_stream(raw, cap, lambda: lim.too_large(path, len(raw)))


def _gunzip_exact(raw: bytes, isize: int) -> bytearray | None:
    """One intact gzip member of `isize` bytes, decompressed into one buffer of that size (so the output
    is allocated once and never exceeds it); None when the file is anything else (several members, a
    trailer that lies, damage): the streaming path then reads it."""
    try:
        out = bytearray(isize)  # at most the limit in force (isize <= cap)
    except MemoryError:
        return None
    view = memoryview(out)
    d = zlib.decompressobj(31)
    data: bytes = raw
    pos = 0
    try:
        while data and not d.eof:
            chunk = d.decompress(data, min(_EXACT_STEP, isize - pos + 1))
            if pos + len(chunk) > isize:
                return None
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
            data = d.unconsumed_tail
    except zlib.error:
        return None
    finally:
        view.release()
    if not d.eof or d.unused_data or pos != isize:
        return None
    return out


def _gunzip_stream(raw: bytes, cap: int, too_large: Callable[[], str]) -> tuple[bytearray, str | None]:
    """Every gzip member in turn; on damage, the output so far and why it stopped. LlmtopError (the line
    `too_large()` gives) as soon as the output would pass `cap` bytes; at most _STREAM_STEP bytes of
    output exist beside the document at any time."""
    out = bytearray()
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
                # never 0 (which would mean "no limit"); a step at a time, so a bomb stops right at the cap
                chunk = d.decompress(data, min(_STREAM_STEP, cap - len(out) + 1))
            except zlib.error as e:
                # garbage after a complete member is left out quietly only when it is zero padding
                error = f"corrupt gzip data ({e})"
                if not fed and out and not any(bytes(data)):
                    error = None
                break
            fed = True
            if len(out) + len(chunk) > cap:
                raise LlmtopError(too_large())
            out += chunk
            data = d.unused_data if d.eof else d.unconsumed_tail
        if error is not None:
            break
    if error is None and fed and not d.eof:
        error = "compressed stream ends before its end marker (truncated .gz)"
    return out, error


def _skip_ws(b: bytes | bytearray | memoryview, i: int) -> int:
    """The index of the first non-blank byte at or after i (len(b) if none): one C search, so a document
    padded with megabytes of blanks costs no Python loop per byte."""
    m = _NOT_WS.search(b, i)
    return m.start() if m else len(b)


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
    except (msgspec.DecodeError, RecursionError):  # damage, or a value nested too deep somewhere
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
            except (msgspec.DecodeError, RecursionError):
                break
            if items:
                yield "items", items
            return
        try:
            items = dec.decode(b"".join((b"[", body[pos : m.start() + 1], b"]")))
        except RecursionError:  # an element nested too deep: value by value from here on
            break
        except msgspec.DecodeError:
            # the `}` was inside a string or a nested value: try twice as far, so that the attempts on
            # one chunk cost at most twice the bytes of the chunk that succeeds
            search_from = pos + 2 * (m.start() + 1 - pos)
            continue
        yield "items", items
        pos = m.end() - 1
        search_from = pos + CHUNK_BYTES
    # msgspec rejected what is left (damage, an element nested too deep, or too many misleading
    # boundaries), or the array never closed: value by value
    text = bytes(body[pos:]).decode("utf-8", errors="replace")
    status.recovered = True
    yield from _recover_items(text, 0, item, status, whole_doc=whole_doc)


def _recover_object(
    view: memoryview, key: str, item: Any, meta: tuple[str, ...], status: WalkStatus
) -> Iterator[tuple[str, Any]]:
    """The stdlib walk over a document msgspec rejected, key by key."""
    status.recovered = True
    text = bytes(view).decode("utf-8", errors="replace")
    dec = json.JSONDecoder(parse_float=str, parse_int=_int)
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
            try:
                v, i = dec.raw_decode(text, i)
            except RecursionError:
                i = _skip_value(text, i)
                if i < 0:
                    status.truncated = True
                    status.error = "the document ends inside a deeply nested value"
                    return
                continue
        except ValueError as e:  # json.JSONDecodeError, or any other value the decoder refuses
            status.truncated = True
            status.error = _where(e, i)
            return
        if k in meta:
            yield "meta", {k: v}


def _int(digits: str) -> int | str:
    """A JSON integer; its text when it has more digits than int() converts (4300): a time that long is
    out of range anyway, and the importers say so instead of the decoder failing on it."""
    return int(digits) if len(digits) < 4000 else digits


def _where(e: ValueError, i: int) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON at char {e.pos}: {e.msg}"
    return f"invalid JSON value at char {i}: {(str(e).splitlines() or [''])[0]}"


def _skip_ws_text(s: str, i: int) -> int:
    m = _NOT_WS_TEXT.search(s, i)
    return m.start() if m else len(s)


def _recover_items(
    text: str, i: int, item: Any, status: WalkStatus, whole_doc: bool
) -> Iterator[tuple[str, Any]]:
    """Elements from text[i] (just after '[' or a ',') to the closing ']'; returns the index after it,
    or -1 when the text ends or breaks first (status.truncated)."""
    dec = json.JSONDecoder(parse_float=str, parse_int=_int)
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
        except RecursionError:  # nested deeper than the stdlib decoder goes: left out, counted
            i = _skip_value(text, i)
            if i < 0:
                status.truncated = True
                status.error = status.error or "the document ends inside a deeply nested element"
                break
            status.too_deep += 1
            continue
        except ValueError as e:  # json.JSONDecodeError, or any other value the decoder refuses
            status.truncated = True
            status.error = _where(e, i)
            break
        batch.append(v)
        if len(batch) >= FALLBACK_ITEMS:
            yield "items", _convert(batch, item, status)
            batch = []
    if batch:
        yield "items", _convert(batch, item, status)
    if whole_doc and end >= 0 and _skip_ws_text(text, end) < n:
        status.error = status.error or "text after the top-level array was ignored"
    return end


def _convert(batch: list[Any], item: Any, status: WalkStatus) -> list[Any]:
    try:
        return msgspec.convert(batch, list[item])
    except (msgspec.ValidationError, RecursionError):  # one odd element: one at a time, keeping the rest
        out = []
        for v in batch:
            try:
                out.append(msgspec.convert(v, item))
            except msgspec.ValidationError:
                out.append(None)
            except RecursionError:
                status.too_deep += 1
        return out


_SKIP_TOKENS = re.compile(r'["\[\]{}]')
_STRING_BODY = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL)


def _skip_value(text: str, i: int) -> int:
    """The index just after the array or object that starts at text[i], found without recursion (any
    depth; strings are skipped whole); -1 when the text ends first."""
    depth = 0
    n = len(text)
    while i < n:
        m = _SKIP_TOKENS.search(text, i)
        if m is None:
            return -1
        c = m.group()
        i = m.end()
        if c == '"':
            sm = _STRING_BODY.match(text, i)
            if sm is None:
                return -1
            i = sm.end()
            continue
        depth += 1 if c in "[{" else -1
        if depth <= 0:
            return i
    return -1


__all__ = ["CHUNK_BYTES", "WalkStatus", "read_bytes", "walk"]
