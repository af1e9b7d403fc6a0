"""Streaming reads of large JSON trace files (plain or gzip) in text chunks.

`TextSource` decompresses by itself so that a truncated gzip still yields everything before the cut;
`JsonArrayReader` walks one top-level array (e.g. Kineto's `traceEvents`) and hands out lists of complete
elements per chunk, parsed by one C-level `json` call each, so memory stays far below the file size.
"""

from __future__ import annotations

import codecs
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK_CHARS = 4 << 20
_WS = " \t\r\n"


class JsonArrayReader:
    """Incremental top-level walk of a JSON document from a text stream."""

    def __init__(self, f: TextSource) -> None:
        self.f = f
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.dec = json.JSONDecoder(parse_float=str)
        self.read_error: str | None = None

    def fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.f.read(CHUNK_CHARS)
        except OSError as e:
            self.read_error = f"{type(e).__name__}: {e}".split("\n")[0]
            chunk = ""
        if self.f.error:
            self.read_error = self.f.error
        if not chunk:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        while True:
            b, p = self.buf, self.pos
            while p < len(b) and b[p] in _WS:
                p += 1
            self.pos = p
            if p < len(b):
                return b[p]
            if not self.fill():
                return ""

    def value(self) -> Any:
        while True:
            self.peek()
            try:
                v, end = self.dec.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.fill():
                    continue
                raise
            self.pos = end
            return v

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            got = self.peek() or "end of file"
            raise json.JSONDecodeError(f"expected {ch!r}, got {got!r}", self.buf, self.pos)
        self.pos += 1

    def array_chunks(self, stats: dict[str, int]) -> Iterator[list[Any]]:
        """Yield lists of the array's elements; the opening '[' is already consumed."""
        dec = self.dec
        while True:
            c = self.peek()
            if c == ",":
                self.pos += 1
                continue
            if c == "]":
                self.pos += 1
                return
            if c == "":
                stats["truncated"] = 1
                return
            b, p = self.buf, self.pos
            j = b.rfind("}")
            while j > p:
                q = j + 1
                while q < len(b) and b[q] in _WS:
                    q += 1
                if q < len(b) and b[q] in ",]":
                    break
                j = b.rfind("}", p, j)
            if j > p:
                try:
                    items = dec.decode("[" + b[p : j + 1] + "]")
                except json.JSONDecodeError:
                    items = None
                if items is not None:
                    self.pos = j + 1
                    yield items
                    continue
            # Boundary guess failed (or no complete element yet): one element at a time.
            try:
                v, end = dec.raw_decode(b, p)
            except json.JSONDecodeError:
                if self.fill():
                    continue
                stats["truncated"] = 1
                return
            self.pos = end
            yield [v]


class TextSource:
    """Chunks of text from a plain or gzip file. Decompresses itself (zlib) so that a truncated gzip
    still yields everything before the cut, then reports the cut in `error` instead of losing the chunk."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 (closed by close())
        self.gz = self.f.read(2) == b"\x1f\x8b"
        self.f.seek(0)
        self.z = zlib.decompressobj(zlib.MAX_WBITS | 16) if self.gz else None
        self.text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.error: str | None = None
        self.done = False

    def read(self, n: int) -> str:
        while not self.done:
            raw = self.f.read(max(n // 4, 1 << 16) if self.gz else n)
            if self.z is None:
                if not raw:
                    self.done = True
                    return self.text.decode(b"", final=True)
                out = self.text.decode(raw)
                if out:
                    return out
                continue
            if not raw:
                self.done = True
                if not self.z.eof:
                    self.error = "compressed stream ends before its end marker (truncated .gz)"
                tail = self.z.flush() if not self.z.eof else b""
                return self.text.decode(tail, final=True)
            try:
                data = self.z.decompress(raw)
                while self.z.eof and self.z.unused_data:  # concatenated gzip members
                    rest = self.z.unused_data
                    self.z = zlib.decompressobj(zlib.MAX_WBITS | 16)
                    data += self.z.decompress(rest)
            except zlib.error as e:
                self.done = True
                self.error = f"corrupt gzip data ({e})"
                return ""
            out = self.text.decode(data)
            if out:
                return out
        return ""

    def close(self) -> None:
        self.f.close()


__all__ = ["CHUNK_CHARS", "JsonArrayReader", "TextSource"]
