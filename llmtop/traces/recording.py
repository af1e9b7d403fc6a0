"""The llmtop trace format: what `--record FILE` writes and `replay` / `report` / `export` read.

Layout (little-endian):

    magic      8 bytes  b"LLMTOPTR"
    version    u16      FORMAT_VERSION
    reserved   u16
    hdr_len    u32
    header     hdr_len bytes of UTF-8 JSON: llmtop version, SourceInfo, clock, the numpy dtype
               descriptions of kernel and step rows (so a reader can convert older layouts)
    hdr_crc    u32      crc32 of the header JSON
    records... each: type u8, flags u8, reserved u16, payload_len u32, t_ns i64, crc32 u32, payload

Record types: BATCH (one EventBatch as the shared batch payload of llmtop.codec with its names as a
JSON list: names_base, names_len, n_kernels, n_steps, the names, raw KERNEL_DTYPE rows, raw STEP_DTYPE
rows), COUNTER (a CounterSample as JSON), MARKER (UTF-8 text). flags bit 0 = payload is zlib
compressed. A whole batch is one record, so a file cut anywhere (kill -9) loses at most the batch
being written: the reader stops at the first short or corrupt record and reports it in `truncated`.
t_ns is when the record happened on the source clock (a batch's last step end), used for replay pacing.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from llmtop.codec import NAMES_JSON, CodecError, decode_batch_payload, encode_batch_payload
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
FORMAT_VERSION = 1
_FILE_HEAD = struct.Struct("<8sHHI")
_REC_HEAD = struct.Struct("<BBHIqI")
REC_BATCH, REC_COUNTER, REC_MARKER = 1, 2, 3
_FLAG_ZLIB = 1
_MAX_PAYLOAD = 1 << 30  # a longer length field means a corrupt record, not a real one


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
        self._write_raw(_FILE_HEAD.pack(MAGIC, FORMAT_VERSION, 0, len(hdr)) + hdr
                        + struct.pack("<I", zlib.crc32(hdr)))
        self.flush()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="llmtop-record-flush", daemon=True)
        self._flusher.start()

    def _write_raw(self, b: bytes) -> None:
        self._f.write(b)
        self.bytes_written += len(b)

    def write(self, item: Item, t_ns: int | None = None) -> None:
        if isinstance(item, EventBatch):
            rtype = REC_BATCH
            payload = encode_batch_payload(item, NAMES_JSON)
        elif isinstance(item, CounterSample):
            rtype = REC_COUNTER
            payload = json.dumps({"source": item.source, "values": item.values},
                                 separators=(",", ":")).encode()
        elif isinstance(item, Marker):
            rtype = REC_MARKER
            payload = item.text.encode()
        else:
            raise TypeError(f"cannot record {type(item).__name__}")
        if t_ns is None:
            t_ns = item_time_ns(item)
            if t_ns is None:
                t_ns = time.perf_counter_ns()
        flags = 0
        if self.compress_level and len(payload) > 256:
            z = zlib.compress(payload, self.compress_level)
            if len(z) < len(payload):
                payload, flags = z, _FLAG_ZLIB
        rec = _REC_HEAD.pack(rtype, flags, 0, len(payload), t_ns, zlib.crc32(payload)) + payload
        with self._lock:
            if self._closed:
                raise LlmtopError(f"recording {self.path} is closed")
            try:
                self._write_raw(rec)
            except OSError as e:
                raise LlmtopError(f"cannot write recording {self.path}: {e.strerror or e}") from None
            self.records_written += 1
            self._dirty = True
            if time.monotonic() - self._last_flush >= self.flush_interval:
                self._flush_locked()

    def _flush_locked(self) -> None:
        self._f.flush()  # to the OS: survives kill -9 of this process (not a power cut)
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
                    self._flush_locked()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._f.flush()
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


class RecordingReader:
    """Reads a llmtop trace: `.source`, `.header`, and iteration over (t_ns, item).

    A cut-short file ends iteration cleanly; `.truncated` then holds a one-line description.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.truncated: str | None = None
        self.records_read = 0
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
        if zlib.crc32(hdr) != struct.unpack("<I", crc)[0]:
            raise LlmtopError(f"{p}: corrupt llmtop recording header (checksum mismatch)")
        try:
            self.header: dict[str, Any] = json.loads(hdr)
            self.source = SourceInfo.from_dict(self.header["source"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise LlmtopError(f"{p}: corrupt llmtop recording header ({e})") from None
        self.format_version = version
        self._kdtype = _dtype_from_descr(self.header.get("kernel_dtype", KERNEL_DTYPE.descr), "kernel", p)
        self._sdtype = _dtype_from_descr(self.header.get("step_dtype", STEP_DTYPE.descr), "step", p)
        self._data_start = self._f.tell()

    def __iter__(self) -> Iterator[tuple[int, Item]]:
        f = self._f
        f.seek(self._data_start)
        self.truncated = None
        self.records_read = 0
        while True:
            pos = f.tell()
            head = f.read(_REC_HEAD.size)
            if not head:
                return
            if len(head) < _REC_HEAD.size:
                self._cut(pos, "record header")
                return
            rtype, flags, _, plen, t_ns, crc = _REC_HEAD.unpack(head)
            if plen > _MAX_PAYLOAD:
                self._cut(pos, "record (bad length)")
                return
            payload = f.read(plen)
            if len(payload) < plen:
                self._cut(pos, "record payload")
                return
            if zlib.crc32(payload) != crc:
                self._cut(pos, "record (checksum mismatch)")
                return
            try:
                if flags & _FLAG_ZLIB:
                    payload = zlib.decompress(payload)
                item = self._decode(rtype, payload, t_ns)
            except (zlib.error, CodecError, ValueError, KeyError, TypeError, struct.error) as e:
                raise LlmtopError(f"{self.path}: corrupt record at byte {pos}: {e}") from None
            self.records_read += 1
            if item is not None:  # unknown record types from newer writers are skipped
                yield t_ns, item

    def _cut(self, pos: int, what: str) -> None:
        size = self.path.stat().st_size
        self.truncated = (f"{self.path.name}: recording cut short at byte {pos} of {size} "
                          f"(incomplete {what}); replayed {self.records_read} records before it")

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
