"""The llmtop trace format: what `--record FILE` writes and `replay` / `report` / `export` read.

docs/RECORDING.md is the full description (layout, name repetition, what a reader does with damage).
Layout (little-endian):

    magic      8 bytes  b"LLMTOPTR"
    version    u16      FORMAT_VERSION (2; version 1 files still read)
    reserved   u16
    hdr_len    u32
    header     hdr_len bytes of UTF-8 JSON: llmtop version, SourceInfo, clock, the numpy dtype
               descriptions of kernel and step rows (so a reader can convert older layouts)
    hdr_crc    u32      crc32 of the header JSON
    records... version 2, 36 bytes then the payload:
                 sync u8[8] (SYNC), type u8, flags u8, reserved u16, seq u32, payload_len u32, t_ns i64,
                 payload_crc u32 (crc32 of the payload as stored), head_crc u32 (crc32 of the 24 bytes
                 from type to payload_crc), payload
               version 1, 20 bytes then the payload:
                 type u8, flags u8, reserved u16, payload_len u32, t_ns i64, crc32 u32, payload

Record types: BATCH (one EventBatch as the shared batch payload of llmtop.codec with its names as a
JSON list), COUNTER (a CounterSample as JSON), MARKER (UTF-8 text). flags bit 0 = payload is zlib
compressed. t_ns is when the record happened on the source clock (a batch's last step end), used for
replay pacing. seq numbers the records of a file 0, 1, 2, ...

Damage: a record whose header or payload checksum fails is skipped and counted; the reader finds the
next intact header by its sync marker (and header checksum) and goes on, and the seq numbers say how
many records were lost in between. A file that ends inside a record (kill -9, a full disk) is "cut
short" (`truncated`), which is not corruption. A batch record repeats the kernel names of the previous
NAME_REPEAT_RECORDS - 1 batch records, so losing fewer than that many batch records in a row loses no
name; names lost anyway come back as `<lost name N>` so that later batches stay consistent.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from llmtop.codec import NAMES_JSON, CodecError, batch_payload, decode_batch_payload, encode_batch_body
from llmtop.errors import LlmtopError
from llmtop.events import KERNEL_DTYPE, STEP_DTYPE, CounterSample, EventBatch, Item, Marker, SourceInfo


def _llmtop_version() -> str:
    # The editable install can expose llmtop as a namespace package (no __init__ run) when started
    # outside the checkout; fall back to the installed distribution's metadata.
    try:
        from llmtop import __version__

        return __version__
    except ImportError:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("llmtop-live")
        except PackageNotFoundError:
            return "unknown"


LLMTOP_VERSION = _llmtop_version()
MAGIC = b"LLMTOPTR"
FORMAT_VERSION = 2
_FILE_HEAD = struct.Struct("<8sHHI")
_U32 = struct.Struct("<I")
SYNC = b"\x89LLMREC\n"  # starts every version 2 record: what a reader resynchronises on
_REC_FIELDS = struct.Struct("<BBHIIqI")  # type, flags, reserved, seq, payload_len, t_ns, payload_crc
REC_HEAD_SIZE = len(SYNC) + _REC_FIELDS.size + _U32.size  # 36
_REC_HEAD_V1 = struct.Struct("<BBHIqI")  # type, flags, reserved, payload_len, t_ns, crc32
REC_BATCH, REC_COUNTER, REC_MARKER = 1, 2, 3
_FLAG_ZLIB = 1
_MAX_PAYLOAD = 1 << 30  # a longer length (stored or decompressed) means a corrupt record, not a real one
NAME_REPEAT_RECORDS = 8  # a kernel name rides in the batch record that adds it and the next 7
NAME_REPEAT_BYTES = 16 * 1024  # at most this much of a batch record's names are repeats
LOST_NAME = "<lost name {}>"  # a name only corrupt records carried (its id in the name table)
_SCAN_CHUNK = 1 << 20  # at most this many bytes read at a time while looking for the next sync marker
_MAX_LISTED = 10  # corrupt record ranges a warning names one by one


def batch_time_ns(batch: EventBatch) -> int | None:
    """When a batch's last step (else kernel) ended; None for a names-only batch."""
    for arr in (batch.steps, batch.kernels):
        if len(arr):
            return int((arr["start_ns"] + arr["dur_ns"]).max())
    return None


def item_time_ns(item: Item) -> int | None:
    return batch_time_ns(item) if isinstance(item, EventBatch) else item.t_ns


def is_recording_head(head: bytes) -> bool:
    """Whether a file's first bytes are a llmtop recording's (its format's sniff)."""
    return head.startswith(MAGIC)


def is_recording(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


class RecordingWriter:
    """Streams items to a llmtop trace; flushed to the OS at least every `flush_interval` seconds.

    Thread-safe: the pipeline's aggregator thread writes while a background thread flushes, so the
    file is current even when no events arrive (a paused or stalled engine).
    """

    def __init__(self, path: str | Path, source: SourceInfo, *, compress_level: int = 1,
                 flush_interval: float = 0.5) -> None:
        self.path = Path(path)
        self.compress_level = compress_level
        self.flush_interval = flush_interval
        self.records_written = 0
        self.bytes_written = 0
        self._seq = 0
        # the name table of the batches written so far (what a reader rebuilds), for the repeats
        self._names: list[str] = []
        self._names_known_from = 0  # names below this were never seen here (the input skipped them)
        self._name_starts: deque[int] = deque(maxlen=NAME_REPEAT_RECORDS - 1)
        try:
            self._f: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise LlmtopError(f"cannot write recording {self.path}: {e.strerror or e}") from None
        header = {
            "format": "llmtop-trace",
            "format_version": FORMAT_VERSION,
            "llmtop_version": LLMTOP_VERSION,
            "created_unix": time.time(),
            "clock": "perf_counter_ns" if source.kind == "live" else source.timing,
            "kernel_dtype": KERNEL_DTYPE.descr,
            "step_dtype": STEP_DTYPE.descr,
            "source": source.to_dict(),
        }
        hdr = json.dumps(header, separators=(",", ":")).encode()
        self._lock = threading.Lock()
        self._dirty = False
        self._last_flush = time.monotonic()
        self._closed = False
        self.error: str | None = None  # the first write/flush failure (disk full): later writes refuse
        try:
            self._write_raw(_FILE_HEAD.pack(MAGIC, FORMAT_VERSION, 0, len(hdr)) + hdr
                            + _U32.pack(zlib.crc32(hdr)))
            self.flush()
        except OSError as e:
            self._f.close()
            raise LlmtopError(f"cannot write recording {self.path}: {e.strerror or e}") from None
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="llmtop-record-flush", daemon=True)
        self._flusher.start()

    def _write_raw(self, b: bytes) -> None:
        self._f.write(b)
        self.bytes_written += len(b)

    def _batch_names(self, batch: EventBatch) -> tuple[int, list[str]]:
        """(names_base, names) for a batch's record: the names it adds and, again, those the previous
        NAME_REPEAT_RECORDS - 1 batch records added (the newest NAME_REPEAT_BYTES of them)."""
        table, base, new = self._names, batch.names_base, batch.new_names
        if base > len(table):  # the input skipped names this writer never saw: they cannot be repeated
            table.extend([""] * (base - len(table)))
            self._names_known_from = base
        start = len(table)  # this batch's own new names begin here (re-sent ones are already known)
        if base + len(new) > start:
            table.extend(new[start - base :])
        lo = max(self._name_starts[0] if self._name_starts else start, self._names_known_from)
        budget = NAME_REPEAT_BYTES
        i = start
        while i > lo and budget >= len(table[i - 1]) + 3:  # + quotes and comma of the JSON list
            budget -= len(table[i - 1]) + 3
            i -= 1
        self._name_starts.append(start)
        return i, table[i:]

    def write(self, item: Item, t_ns: int | None = None) -> None:
        body = b""
        if isinstance(item, EventBatch):
            rtype = REC_BATCH
            body = encode_batch_body(item.kernels, item.steps)
        elif isinstance(item, CounterSample):
            rtype = REC_COUNTER
            body = json.dumps({"source": item.source, "values": item.values}, separators=(",", ":")).encode()
        elif isinstance(item, Marker):
            rtype = REC_MARKER
            body = item.text.encode()
        else:
            raise TypeError(f"cannot record {type(item).__name__}")
        if t_ns is None:
            t_ns = item_time_ns(item)
            if t_ns is None:
                t_ns = time.perf_counter_ns()
        with self._lock:  # names and seq in the order the records reach the file
            if self._closed:
                raise LlmtopError(f"recording {self.path} is closed")
            payload = body
            if isinstance(item, EventBatch):
                base, names = self._batch_names(item)
                payload = batch_payload(base, names, len(item.kernels), len(item.steps), body, NAMES_JSON)
            flags = 0
            if self.compress_level and len(payload) > 256:
                z = zlib.compress(payload, self.compress_level)
                if len(z) < len(payload):
                    payload, flags = z, _FLAG_ZLIB
            # a record that fails to write still uses its number: a reader sees the gap
            seq, self._seq = self._seq, (self._seq + 1) & 0xFFFFFFFF
            fields = _REC_FIELDS.pack(rtype, flags, 0, seq, len(payload), t_ns, zlib.crc32(payload))
            try:
                self._write_raw(SYNC + fields + _U32.pack(zlib.crc32(fields)))
                self._write_raw(payload)
            except OSError as e:
                raise LlmtopError(f"cannot write recording {self.path}: {e.strerror or e}") from None
            self.records_written += 1
            self._dirty = True
            if time.monotonic() - self._last_flush >= self.flush_interval:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if self.error is not None:
            raise LlmtopError(self.error)
        try:
            self._f.flush()  # to the OS: survives kill -9 of this process (not a power cut)
        except OSError as e:  # disk full, file size limit: remembered, and every later write refuses
            self.error = f"cannot write recording {self.path}: {e.strerror or e}"
            raise LlmtopError(self.error) from None
        self._dirty = False
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._flush_locked()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval / 2):
            with self._lock:
                if self._closed:
                    return
                if self._dirty and time.monotonic() - self._last_flush >= self.flush_interval / 2:
                    try:
                        self._flush_locked()
                    except LlmtopError:  # kept in self.error: the next write() reports it
                        return

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self.error is None:
                    self._f.flush()
            except OSError as e:
                self.error = f"cannot write recording {self.path}: {e.strerror or e}"
            finally:
                with contextlib.suppress(OSError):  # a close that flushes into a full disk
                    self._f.close()
        if self._flusher is not threading.current_thread():
            self._flusher.join(1.0)

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dtype_from_descr(descr: Any, what: str, path: Path) -> np.dtype:
    try:
        return np.dtype([tuple(f) for f in descr])
    except (TypeError, ValueError) as e:
        raise LlmtopError(f"{path}: bad {what} layout in header ({e})") from None


class _Head(NamedTuple):
    rtype: int
    flags: int
    seq: int
    plen: int
    t_ns: int
    crc: int


def _parse_head(b: bytes) -> _Head | None:
    """A version 2 record header, or None unless its sync marker and checksum are intact."""
    if len(b) < REC_HEAD_SIZE or not b.startswith(SYNC):
        return None
    fields = b[len(SYNC) : len(SYNC) + _REC_FIELDS.size]
    if zlib.crc32(fields) != _U32.unpack_from(b, len(SYNC) + _REC_FIELDS.size)[0]:
        return None
    rtype, flags, _, seq, plen, t_ns, crc = _REC_FIELDS.unpack(fields)
    return _Head(rtype, flags, seq, plen, t_ns, crc) if plen <= _MAX_PAYLOAD else None


def _inflate(payload: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(payload, _MAX_PAYLOAD)
    if d.unconsumed_tail:
        raise CodecError(f"record expands beyond {_MAX_PAYLOAD} bytes")
    if not d.eof:
        raise CodecError("compressed record ends early")
    return out


_DECODE_ERRORS = (zlib.error, CodecError, ValueError, KeyError, TypeError, AttributeError, struct.error,
                  OverflowError, RecursionError)


def _ranges_text(spans: list[list[int]]) -> str:
    """'record 4', 'records 4-6 and 9', 'records 1, 4-6, ... and 30 (14 ranges)'."""
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in spans]
    word = "record" if len(parts) == 1 and spans[0][0] == spans[0][1] else "records"
    if len(parts) > _MAX_LISTED:
        return f"{word} {', '.join(parts[: _MAX_LISTED - 1])}, ... and {parts[-1]} ({len(parts)} ranges)"
    if len(parts) == 1:
        return f"{word} {parts[0]}"
    return f"{word} {', '.join(parts[:-1])} and {parts[-1]}"


class RecordingReader:
    """Reads a llmtop trace: `.source`, `.header`, and iteration over (t_ns, item).

    Damage never ends iteration with an exception: a corrupt record is skipped (`corrupt`: its
    1-based record numbers as [first, last] ranges; `corrupt_records`: how many), a cut-short file ends
    cleanly (`truncated`: one line), and `problems()` gives the one-line warnings after iteration.
    Batches come out with their names in order (`names_base` = the names handed out so far): repeats are
    dropped and names only corrupt records carried become `<lost name N>` (`lost_names` counts them).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reset()
        try:
            self._f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except IsADirectoryError:
            raise LlmtopError(f"{self.path} is a directory, not a recording") from None
        except OSError as e:
            raise LlmtopError(f"cannot read {self.path}: {e.strerror or e}") from None
        try:
            self._read_header()
        except BaseException:
            self._f.close()
            raise

    def _reset(self) -> None:
        self.truncated: str | None = None
        self.records_read = 0  # intact records (what was kept)
        self.corrupt: list[list[int]] = []
        self.corrupt_records = 0
        self.records_total = 0  # records the file held, as far as can be told
        self.lost_names = 0
        self.stray_bytes = 0  # bytes between records that belong to no record
        self.unreadable: tuple[int, int] | None = None  # version 1: (byte offset, bytes) left unread
        self._n_names = 0
        self._syncs_seen = 0
        self._last_sync: int | None = None
        self._size = 0

    def _read_header(self) -> None:
        p = self.path
        head = self._f.read(_FILE_HEAD.size)
        if not head:
            raise LlmtopError(f"{p} is empty, not an llmtop recording")
        if head[: len(MAGIC)] != MAGIC[: len(head)]:
            raise LlmtopError(f"{p} is not an llmtop recording (unknown file signature)")
        if len(head) < _FILE_HEAD.size:
            raise LlmtopError(f"{p}: llmtop recording truncated inside its header")
        _, version, _, hlen = _FILE_HEAD.unpack(head)
        if version > FORMAT_VERSION or version < 1:
            raise LlmtopError(f"{p}: recording format version {version} is not supported "
                              f"(this llmtop {LLMTOP_VERSION} reads up to {FORMAT_VERSION})")
        if hlen > _MAX_PAYLOAD:
            raise LlmtopError(f"{p}: corrupt llmtop recording header")
        hdr = self._f.read(hlen)
        crc = self._f.read(4)
        if len(hdr) < hlen or len(crc) < 4:
            raise LlmtopError(f"{p}: llmtop recording truncated inside its header")
        if zlib.crc32(hdr) != _U32.unpack(crc)[0]:
            raise LlmtopError(f"{p}: corrupt llmtop recording header (checksum mismatch)")
        try:
            self.header: dict[str, Any] = json.loads(hdr)
            self.source = SourceInfo.from_dict(self.header["source"])
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise LlmtopError(f"{p}: corrupt llmtop recording header ({e})") from None
        self.format_version = version
        self._kdtype = _dtype_from_descr(self.header.get("kernel_dtype", KERNEL_DTYPE.descr), "kernel", p)
        self._sdtype = _dtype_from_descr(self.header.get("step_dtype", STEP_DTYPE.descr), "step", p)
        self._data_start = self._f.tell()

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, Item]]:
        self._reset()
        self._size = os.fstat(self._f.fileno()).st_size
        raw = self._records_v1() if self.format_version == 1 else self._records_v2()
        for number, h, payload in raw:
            try:
                if h.flags & _FLAG_ZLIB:
                    payload = _inflate(payload)
                item = self._decode(h.rtype, payload, h.t_ns)
            except _DECODE_ERRORS:
                self._lose(number, 1)  # intact bytes that do not decode: a writer bug, or v1 damage
                continue
            self.records_read += 1
            if item is None:  # unknown record types from newer writers are skipped
                continue
            if isinstance(item, EventBatch):
                item = self._names_in_order(item)
            yield h.t_ns, item

    def _records_v2(self) -> Iterator[tuple[int, _Head, bytes]]:
        """(record number from 1, header, payload) of each record whose checksums hold."""
        f = self._f
        pos, expect = self._data_start, 0  # expect: the seq the next record should have
        while True:
            f.seek(pos)
            head = f.read(REC_HEAD_SIZE)
            if not head:
                return
            h = _parse_head(head)
            if h is not None and h.seq < expect:
                h = None  # a stale copy of an earlier record is not the one that belongs here
            if h is None:
                if len(head) < REC_HEAD_SIZE and SYNC.startswith(head[: len(SYNC)]):
                    self._cut(pos, "record header", expect + 1)
                    return
                found = self._scan(pos + 1, expect)
                if found is None:  # damage runs to the end: count the records whose markers survive
                    last = self._last_sync
                    if last is not None and self._size - last < REC_HEAD_SIZE:  # the last one is cut short
                        self._lose(expect + 1, self._syncs_seen)
                        self._cut(last, "record header", expect + 1 + self._syncs_seen)
                    else:
                        self._lose(expect + 1, 1 + self._syncs_seen)
                    return
                nxt, h = found
                if h.seq == expect:
                    self.stray_bytes += nxt - pos
                pos = nxt
                f.seek(pos + REC_HEAD_SIZE)
            if h.seq > expect:  # records between were lost (their bytes damaged, or never written)
                self._lose(expect + 1, h.seq - expect)
            expect = h.seq + 1
            payload = f.read(h.plen)
            if len(payload) < h.plen:
                found = self._scan(pos + 1, expect)
                if found is None:
                    self._cut(pos, "record payload", h.seq + 1)
                    return
                self._lose(h.seq + 1, 1)  # a later record starts inside this one: it is damaged
                pos = found[0]
                continue
            if zlib.crc32(payload) != h.crc:
                # the next record normally starts where this one's length says; searching from just
                # after this header finds it there, and finds it too when the header was a misplaced copy
                self._lose(h.seq + 1, 1)
                found = self._scan(pos + 1, expect)
                pos = found[0] if found else pos + REC_HEAD_SIZE + h.plen  # else: a cut or damaged tail
                continue
            pos += REC_HEAD_SIZE + h.plen
            self.records_total = max(self.records_total, h.seq + 1)
            yield h.seq + 1, h, payload

    def _scan(self, start: int, min_seq: int) -> tuple[int, _Head] | None:
        """The next intact record header at or after byte `start` with seq >= min_seq: (offset, header).

        `_syncs_seen` counts the sync markers passed on the way (the records a damaged tail held),
        `_last_sync` is where the last of them is."""
        f = self._f
        self._syncs_seen, self._last_sync = 0, None
        pos, chunk = start, min(_SCAN_CHUNK, 1 << 16)  # the next record is usually near: start small
        while True:
            f.seek(pos)
            buf = f.read(chunk + REC_HEAD_SIZE)  # a header straddling the chunk end is whole
            limit = min(chunk, len(buf))
            j = buf.find(SYNC, 0, limit + len(SYNC) - 1)
            while j >= 0:
                self._syncs_seen += 1
                self._last_sync = pos + j
                h = _parse_head(buf[j : j + REC_HEAD_SIZE])
                if h is not None and h.seq >= min_seq:
                    return pos + j, h
                j = buf.find(SYNC, j + 1, limit + len(SYNC) - 1)
            if len(buf) <= chunk:
                return None
            pos += chunk
            chunk = min(2 * chunk, _SCAN_CHUNK)

    def _records_v1(self) -> Iterator[tuple[int, _Head, bytes]]:
        """Version 1 records: no sync marker, no header checksum. A record whose payload checksum fails
        is skipped when its length leads exactly to the end of the file or to an intact record; else
        nothing after it can be found again and the rest of the file is left unread."""
        f = self._f
        pos, number = self._data_start, 0
        while True:
            f.seek(pos)
            head = f.read(_REC_HEAD_V1.size)
            if not head:
                return
            number += 1
            if len(head) < _REC_HEAD_V1.size:
                self._cut(pos, "record header", number)
                return
            rtype, flags, _, plen, t_ns, crc = _REC_HEAD_V1.unpack(head)
            if plen > _MAX_PAYLOAD or pos + _REC_HEAD_V1.size + plen > self._size:
                # v1 cannot tell a damaged length from a cut: both look like a record past the end
                self._cut(pos, "record payload" if plen <= _MAX_PAYLOAD else "record (bad length)", number)
                return
            payload = f.read(plen)
            nxt = pos + _REC_HEAD_V1.size + plen
            if zlib.crc32(payload) != crc:
                self._lose(number, 1)
                if nxt == self._size or self._v1_intact_at(nxt):
                    pos = nxt
                    continue
                self.unreadable = (nxt, self._size - nxt)
                return
            self.records_total = max(self.records_total, number)
            yield number, _Head(rtype, flags, number - 1, plen, t_ns, crc), payload
            pos = nxt

    def _v1_intact_at(self, pos: int) -> bool:
        f = self._f
        f.seek(pos)
        head = f.read(_REC_HEAD_V1.size)
        if len(head) < _REC_HEAD_V1.size:
            return False
        _, _, _, plen, _, crc = _REC_HEAD_V1.unpack(head)
        if pos + _REC_HEAD_V1.size + plen > self._size:
            return False
        return zlib.crc32(f.read(plen)) == crc

    def _lose(self, first: int, count: int) -> None:
        """Records `first` .. `first + count - 1` (numbered from 1) are corrupt: counted, not read."""
        last = first + count - 1
        if self.corrupt and self.corrupt[-1][1] + 1 >= first:
            self.corrupt[-1][1] = max(self.corrupt[-1][1], last)
        else:
            self.corrupt.append([first, last])
        self.corrupt_records += count
        self.records_total = max(self.records_total, last)

    def _cut(self, pos: int, what: str, number: int) -> None:
        self.records_total = max(self.records_total, number)
        self.truncated = (f"{self.path.name}: recording cut short at byte {pos} of {self._size} "
                          f"(incomplete {what}); replayed {self.records_read} records before it")

    def _names_in_order(self, batch: EventBatch) -> EventBatch:
        """The batch with only the names not handed out yet, placeholders standing in for lost ones."""
        n, base, new = self._n_names, batch.names_base, batch.new_names
        if base == n:
            self._n_names = n + len(new)
            return batch
        if base > n:  # the records that added names n..base-1 were all lost
            self.lost_names += base - n
            new = [LOST_NAME.format(i) for i in range(n, base)] + list(new)
        else:  # repeats of names handed out already
            new = list(new[n - base :])
        self._n_names = n + len(new)
        return EventBatch(batch.kernels, batch.steps, n, new)

    def problems(self) -> list[str]:
        """One line per kind of damage found by the last iteration (corrupt, lost names, cut short)."""
        name, out = self.path.name, []
        if self.corrupt:
            total = "" if self.unreadable else f" of {self.records_total}"
            lost = "skipped" if self.corrupt_records == 1 else f"{self.corrupt_records} skipped"
            out.append(f"{name}: {_ranges_text(self.corrupt)}{total} corrupt: {lost}; "
                       f"{self.records_read} kept")
        if self.unreadable:
            at, n = self.unreadable
            out.append(f"{name}: the {n} bytes from byte {at} on cannot be read: a version 1 recording has "
                       "no sync markers to find the next record after a damaged one")
        if self.stray_bytes:
            out.append(f"{name}: {self.stray_bytes} damaged bytes between records skipped")
        if self.lost_names:
            out.append(f"{name}: {self.lost_names} kernel names were only in corrupt records: their "
                       f"kernels show as {LOST_NAME.format('N')}")
        if self.truncated:
            out.append(self.truncated)
        return out

    def _decode(self, rtype: int, payload: bytes, t_ns: int) -> Item | None:
        if rtype == REC_BATCH:
            return decode_batch_payload(payload, NAMES_JSON, kernel_dtype=self._kdtype,
                                        step_dtype=self._sdtype)
        if rtype == REC_COUNTER:
            d = json.loads(payload)
            return CounterSample(str(d["source"]), t_ns, {str(k): float(v) for k, v in d["values"].items()})
        if rtype == REC_MARKER:
            return Marker(t_ns, payload.decode("utf-8", "replace"))
        return None

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
