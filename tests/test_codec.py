"""The one EventBatch codec (llmtop.codec): frame bytes unchanged, both name encodings, older row layouts."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from test_recording import REFERENCE_DIR, reference_items

from llmtop import codec
from llmtop.agent import wire
from llmtop.events import KERNEL_DTYPE, STEP_DTYPE, EventBatch


def _batches() -> list[EventBatch]:
    return [b for b, _ in reference_items() if isinstance(b, EventBatch)]


# The step rows before they gained the CUPTI busy/idle columns (agent wire version 1).
STEP_DTYPE_V1 = np.dtype([(n, STEP_DTYPE.fields[n][0]) for n in STEP_DTYPE.names
                          if n not in ("busy_ns", "idle_ns")])


def test_wire_version_1_batches_decode_with_their_layout() -> None:
    """The frames the agent wire version 1 carried (before the shared codec, 9-column step rows) decode,
    given their layout, to the same items: what a recording's header makes possible for old files."""
    f = io.BytesIO((REFERENCE_DIR / "reference_wire_batches_v1.bin").read_bytes())
    for want in _batches():
        frame = codec.read_stream_frame(f)
        assert frame is not None and frame[0] == codec.BATCH
        got = codec.decode_batch_payload(frame[1], step_dtype=STEP_DTYPE_V1)
        assert np.array_equal(got.kernels, want.kernels) and np.array_equal(got.steps, want.steps)
    assert codec.read_stream_frame(f) is None
    assert wire.VERSION == 2  # a version-1 peer is refused at the handshake, not misread


def test_frames_are_byte_identical_to_the_reference() -> None:
    ref = (REFERENCE_DIR / "reference_wire_batches_v2.bin").read_bytes()
    assert b"".join(codec.encode_batch(b) for b in _batches()) == ref
    # the agent's shared-body path gives the same frames
    shared = b"".join(codec.batch_frame(b.names_base, b.new_names, len(b.kernels), len(b.steps),
                                        codec.encode_batch_body(b.kernels, b.steps)) for b in _batches())
    assert shared == ref
    f = io.BytesIO(ref)
    for want in _batches():
        frame = codec.read_stream_frame(f)
        assert frame is not None and frame[0] == codec.BATCH
        got = codec.decode_batch(frame[1])
        assert np.array_equal(got.kernels, want.kernels) and np.array_equal(got.steps, want.steps)
        assert (got.names_base, got.new_names) == (want.names_base, want.new_names)
    assert codec.read_stream_frame(f) is None


def test_wire_and_engine_pipe_use_the_codec() -> None:
    assert wire.WireError is codec.CodecError
    for name in ("encode_batch", "decode_batch", "frame", "json_frame", "read_stream_frame", "FrameReader",
                 "decode_json", "batch_frame", "encode_batch_body", "read_frame", "recv_exact"):
        assert getattr(wire, name) is getattr(codec, name), name
    assert (wire.BATCH, wire.MAX_FRAME, wire.FRAME_TYPES) == (codec.BATCH, codec.MAX_FRAME, codec.FRAME_TYPES)


@pytest.mark.parametrize("encoding", [codec.NAMES_PACKED, codec.NAMES_JSON])
def test_payload_round_trip_and_malformed(encoding: codec.NameEncoding) -> None:
    for b in _batches():
        payload = codec.encode_batch_payload(b, encoding)
        base, names_len, nk, ns = codec.BATCH_HEAD.unpack_from(payload)
        assert (base, nk, ns) == (b.names_base, len(b.kernels), len(b.steps))
        if encoding == codec.NAMES_PACKED:
            assert names_len == len(b.new_names)
        got = codec.decode_batch_payload(payload, encoding)
        assert np.array_equal(got.kernels, b.kernels) and got.new_names == b.new_names
        for bad in (payload[:-1], payload + b"x", payload[:7], b""):
            with pytest.raises(codec.CodecError):
                codec.decode_batch_payload(bad, encoding)
    bad_names = codec.BATCH_HEAD.pack(0, 4, 0, 0) + b'{"a"'
    with pytest.raises(codec.CodecError, match=r"JSON|list"):
        codec.decode_batch_payload(bad_names, codec.NAMES_JSON)


def test_rows_of_an_older_layout_are_converted() -> None:
    old_k = np.dtype([(n, KERNEL_DTYPE.fields[n][0]) for n in KERNEL_DTYPE.names if n not in ("m", "n", "k")])
    old_s = np.dtype([(n, STEP_DTYPE.fields[n][0]) for n in STEP_DTYPE.names if n != "kernel_ns"])
    k = np.zeros(3, old_k)
    k["name"], k["dur_ns"] = [0, 1, 0], [5, 6, 7]
    s = np.zeros(1, old_s)
    s["tokens"] = 4
    payload = codec.BATCH_HEAD.pack(0, 0, 3, 1) + k.tobytes() + s.tobytes()
    got = codec.decode_batch_payload(payload, codec.NAMES_JSON, kernel_dtype=old_k, step_dtype=old_s)
    assert got.kernels.dtype == KERNEL_DTYPE and got.steps.dtype == STEP_DTYPE
    assert got.kernels["dur_ns"].tolist() == [5, 6, 7] and got.kernels["m"].tolist() == [0, 0, 0]
    assert got.steps["tokens"].tolist() == [4]


def test_frame_limits() -> None:
    with pytest.raises(codec.CodecError, match="exceeds"):
        codec.frame(codec.BATCH, b"\0" * (codec.MAX_FRAME + 1))
    with pytest.raises(codec.CodecError, match="exceeds"):
        codec.read_stream_frame(io.BytesIO(struct.pack("<IB", codec.MAX_FRAME + 1, codec.BATCH)))
    with pytest.raises(codec.CodecError, match="not an object"):
        codec.decode_json(b"[1]")
