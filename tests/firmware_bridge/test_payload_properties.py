"""Property and fuzz tests of Vigil's own payload codec (``firmware_bridge/payload.py``).

What must hold for every kind:

* encode -> decode round-trips within half a wire step, and decoded values are the double nearest the
  decimal ``raw x scale`` (prints as ``1.2``, not ``1.2000000000000002``);
* decode -> encode reproduces the bytes of any payload whose channels are in range;
* the scalar ``decode``, the batch ``decode_many`` and the buffer ``decode_buffer`` agree exactly: same
  valid rows in the same order with bit-identical values (NaN included), same reject indices, reasons,
  messages and bytes;
* arbitrary bytes never raise anything but ``DecodeError``.

The vectors are generated (hypothesis); there is no external test vector in this file. The worked
examples of ``docs/payloads.md`` are checked by ``test_payload_docs.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import struct
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import DecodeError
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from firmware_bridge.payload import PAYLOAD_VERSION, PayloadCodec
from firmware_bridge.registry import KINDS, decode_payload, kind_of_payload

CODECS = [s.codec for s in KINDS.values()]
IDS = [c.kind.value for c in CODECS]

FAST = settings(max_examples=200, deadline=None, database=None)
BATCH = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- strategies -------------------------------------------------------------------------------------------
def _wire_range(wire: str) -> tuple[int, int]:
    info = np.iinfo(np.dtype(wire))
    return int(info.min), int(info.max)


def _in_range_raw(codec: PayloadCodec) -> st.SearchStrategy[list[int]]:
    """Raw channel integers whose decoded value lies inside the declared valid range."""
    parts = []
    for c in codec.channels:
        lo, hi = _wire_range(c.wire)
        lo = max(lo, math.ceil(round(c.low / c.scale, 6)))
        hi = min(hi, math.floor(round(c.high / c.scale, 6)))
        parts.append(st.integers(lo, hi))
    return st.tuples(*parts).map(list)


def _any_raw(codec: PayloadCodec) -> st.SearchStrategy[list[int]]:
    return st.tuples(*(st.integers(*_wire_range(c.wire)) for c in codec.channels)).map(list)


_STRUCT = {"u1": "B", "i1": "b", ">u2": "H", ">i2": "h", ">u4": "I", ">i4": "i"}


def _pack(codec: PayloadCodec, header: tuple[int, int, int, int, int, int], raws: list[int]) -> bytes:
    """Our own packer (struct, not the codec's numpy dtype), so a layout bug cannot hide in both."""
    fmt = ">BBHHBH" + "".join(_STRUCT[c.wire] for c in codec.channels)
    return struct.pack(fmt, *header, *raws)


def valid_payloads(codec: PayloadCodec, *, in_range: bool = False) -> st.SearchStrategy[bytes]:
    header = st.tuples(
        st.just(PAYLOAD_VERSION),
        st.just(codec.kind_code),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.integers(0, 100),
        st.integers(0, 0xFFFF),
    )
    raws = _in_range_raw(codec) if in_range else _any_raw(codec)
    return st.builds(lambda h, r: _pack(codec, h, r), header, raws)


def mixed_payloads(codec: PayloadCodec) -> st.SearchStrategy[bytes]:
    """Valid payloads, payloads with one bad header field, wrong lengths, and arbitrary bytes."""
    valid = valid_payloads(codec)
    bad_version = st.builds(
        lambda p, v: bytes([v]) + p[1:], valid, st.integers(0, 255).filter(lambda v: v != 1)
    )
    bad_kind = st.builds(lambda p, k: p[:1] + bytes([k]) + p[2:], valid, st.integers(0, 255))
    bad_battery = st.builds(lambda p, b: p[:6] + bytes([b]) + p[7:], valid, st.integers(101, 255))
    bad_length = st.builds(
        lambda p, k: p[:k] if k < len(p) else p + bytes(k - len(p) + 1), valid, st.integers(0, 2 * codec.size)
    )
    noise = st.binary(max_size=2 * codec.size)
    return st.one_of(valid, valid, bad_version, bad_kind, bad_battery, bad_length, noise)


# -- helpers ----------------------------------------------------------------------------------------------
def _scalar(
    codec: PayloadCodec, payloads: list[bytes], ids: list[str], times: list[float]
) -> tuple[list[Reading], list[tuple[int, DecodeError]]]:
    good, bad = [], []
    for i, (p, d, t) in enumerate(zip(payloads, ids, times, strict=True)):
        try:
            good.append(codec.decode(p, device_id=d, time=t))
        except DecodeError as exc:
            bad.append((i, exc))
    return good, bad


def _assert_batch_equals(batch: ReadingBatch, readings: list[Reading]) -> None:
    expected = ReadingBatch.from_readings(batch.kind, readings, n_channels=batch.values.shape[1])
    assert list(batch.device_id) == list(expected.device_id)
    for col in ("seq", "time", "battery_pct", "flags", "fw_version"):
        np.testing.assert_array_equal(getattr(batch, col), getattr(expected, col), err_msg=col)
    assert batch.values.shape == expected.values.shape
    # identical values, NaN in the same places, same signs (so -0.0 and 0.0 are told apart)
    assert np.array_equal(batch.values, expected.values, equal_nan=True)
    assert np.array_equal(np.signbit(batch.values), np.signbit(expected.values))


def _assert_rejects_equal(got: list[tuple[int, DecodeError]], want: list[tuple[int, DecodeError]]) -> None:
    assert [(i, e.reason, str(e), e.data) for i, e in got] == [(i, e.reason, str(e), e.data) for i, e in want]


def _step(scale: float) -> float:
    return scale / 2 * (1 + 1e-9)


# -- round trips ------------------------------------------------------------------------------------------
def _reading_strategy(codec: PayloadCodec) -> st.SearchStrategy[Reading]:
    values = st.tuples(
        *(st.floats(c.low, c.high, allow_nan=False, allow_infinity=False) for c in codec.channels)
    )
    return st.builds(
        Reading,
        kind=st.just(codec.kind),
        device_id=st.text(min_size=1, max_size=8),
        seq=st.integers(0, 0xFFFF),
        time=st.floats(0, 4e9),
        battery_pct=st.floats(0, 100),
        flags=st.integers(0, 0xFFFF),
        values=values,
        fw_version=st.integers(0, 0xFFFF),
    )


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@FAST
@given(data=st.data())
def test_encode_decode_round_trip_within_resolution(codec: PayloadCodec, data: st.DataObject) -> None:
    r = data.draw(_reading_strategy(codec))
    payload = codec.encode(r)
    assert len(payload) == codec.size
    assert kind_of_payload(payload) is codec.kind
    d = codec.decode(payload, device_id=r.device_id, time=r.time)
    assert (d.kind, d.device_id, d.seq, d.time, d.flags, d.fw_version) == (
        r.kind,
        r.device_id,
        r.seq,
        r.time,
        r.flags,
        r.fw_version,
    )
    assert abs(d.battery_pct - r.battery_pct) <= 0.5
    for c, got, want in zip(codec.channels, d.values, r.values, strict=True):
        assert abs(got - want) <= _step(c.scale), c.name
        assert c.valid(got), c.name


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@FAST
@given(data=st.data())
def test_decode_encode_reproduces_bytes_and_values_are_clean_decimals(
    codec: PayloadCodec, data: st.DataObject
) -> None:
    payload = data.draw(valid_payloads(codec, in_range=True))
    d = codec.decode(payload, device_id="d", time=0.0)
    assert codec.encode(d) == payload
    rec = np.frombuffer(payload, dtype=codec.dtype)[0]
    for c, v in zip(codec.channels, d.values, strict=True):
        # the double nearest the exact decimal raw x scale: 12 x 0.1 -> 1.2, never 1.2000000000000002
        assert v == float(Decimal(int(rec[c.name])) * Decimal(repr(c.scale))), c.name


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@FAST
@given(data=st.data())
def test_out_of_range_channel_is_nan_and_nothing_else_changes(
    codec: PayloadCodec, data: st.DataObject
) -> None:
    payload = data.draw(valid_payloads(codec))
    d = codec.decode(payload, device_id="d", time=0.0)
    rec = np.frombuffer(payload, dtype=codec.dtype)[0]
    assert (d.seq, d.flags, d.battery_pct, d.fw_version) == (
        int(rec["seq"]),
        int(rec["flags"]),
        float(rec["battery"]),
        int(rec["fw"]),
    )
    for c, v in zip(codec.channels, d.values, strict=True):
        exact = float(Decimal(int(rec[c.name])) * Decimal(repr(c.scale)))
        if c.low <= exact <= c.high:
            assert v == exact, c.name
        else:
            assert math.isnan(v), c.name


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@FAST
@given(data=st.data())
def test_nan_encodes_as_not_available_where_the_wire_has_room(
    codec: PayloadCodec, data: st.DataObject
) -> None:
    r = data.draw(_reading_strategy(codec))
    k = data.draw(st.integers(0, len(codec.channels) - 1))
    values = list(r.values)
    values[k] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    d = codec.decode(codec.encode(dataclasses.replace(r, values=tuple(values))), device_id="d", time=0.0)
    c = codec.channels[k]
    _, hi = _wire_range(c.wire)
    if c.valid(hi * c.scale):  # no spare pattern (steps, stillness_s): documented to encode as 0
        assert d.values[k] == 0.0
    else:
        assert math.isnan(d.values[k])


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@FAST
@given(data=st.data())
def test_encode_never_raises_for_any_float(codec: PayloadCodec, data: st.DataObject) -> None:
    values = data.draw(st.tuples(*(st.floats() for _ in codec.channels)))
    battery = data.draw(st.floats())
    r = Reading(codec.kind, "d", data.draw(st.integers(-(2**40), 2**40)), 0.0, battery, 0, values)
    d = codec.decode(codec.encode(r), device_id="d", time=0.0)
    assert 0 <= d.battery_pct <= 100
    for c, v, given_v in zip(codec.channels, d.values, values, strict=True):
        assert math.isnan(v) or c.valid(v), c.name
        if c.valid(given_v):
            assert abs(v - given_v) <= _step(c.scale), c.name


# -- scalar == batch == buffer ----------------------------------------------------------------------------
@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@BATCH
@given(data=st.data())
def test_decode_many_agrees_with_scalar_decode(codec: PayloadCodec, data: st.DataObject) -> None:
    payloads = data.draw(st.lists(mixed_payloads(codec), max_size=16))
    ids = [f"dev-{i}" for i in range(len(payloads))]
    per_row_times = data.draw(st.booleans())
    times = [1.7e9 + i for i in range(len(payloads))] if per_row_times else [1.7e9] * len(payloads)
    want_good, want_bad = _scalar(codec, payloads, ids, times)
    batch, rejects = codec.decode_many(payloads, device_ids=ids, times=times if per_row_times else 1.7e9)
    _assert_batch_equals(batch, want_good)
    _assert_rejects_equal(rejects, want_bad)
    assert len(batch) + len(rejects) == len(payloads)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@BATCH
@given(data=st.data())
def test_decode_buffer_agrees_with_decode_many(codec: PayloadCodec, data: st.DataObject) -> None:
    same_size = st.one_of(
        valid_payloads(codec),
        st.builds(lambda p, v: bytes([v]) + p[1:], valid_payloads(codec), st.integers(0, 255)),
        st.binary(min_size=codec.size, max_size=codec.size),
    )
    payloads = data.draw(st.lists(same_size, max_size=16))
    ids = [f"d{i}" for i in range(len(payloads))]
    times = np.arange(len(payloads), dtype=np.float64)
    want_batch, want_rejects = codec.decode_many(payloads, device_ids=ids, times=times)
    buf = data.draw(st.sampled_from([bytes, bytearray, memoryview]))(b"".join(payloads))
    batch, rejects = codec.decode_buffer(buf, device_ids=ids, times=times)
    _assert_batch_equals(batch, want_batch.readings())
    _assert_rejects_equal(rejects, want_rejects)


# -- fuzz: nothing but DecodeError ------------------------------------------------------------------------
@settings(max_examples=1500, deadline=None, database=None)
@given(blob=st.binary(max_size=64))
def test_fuzz_scalar_decoders_raise_only_decode_error(blob: bytes) -> None:
    for codec in CODECS:
        try:
            r = codec.decode(blob, device_id="f", time=0.0)
        except DecodeError as exc:
            assert exc.reason in {"length", "version", "kind", "range"}
            assert exc.data == blob
        else:
            assert all(math.isnan(v) or c.valid(v) for c, v in zip(codec.channels, r.values, strict=True))
    try:
        kind = kind_of_payload(blob)
    except DecodeError as exc:
        assert exc.data == blob
    else:
        assert isinstance(kind, DeviceKind)
    with contextlib.suppress(DecodeError):
        decode_payload(memoryview(blob), device_id="f", time=0.0)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(blobs=st.lists(st.binary(max_size=40), max_size=16))
def test_fuzz_decode_many_rejects_only_with_decode_error(blobs: list[bytes]) -> None:
    for codec in CODECS:
        batch, rejects = codec.decode_many(blobs, device_ids=["f"] * len(blobs), times=0.0)
        assert len(batch) + len(rejects) == len(blobs)
        assert all(isinstance(e, DecodeError) and e.data == blobs[i] for i, e in rejects)
        finite = np.isfinite(batch.values)
        assert np.all((batch.values >= codec._low) & (batch.values <= codec._high) | ~finite)


@settings(max_examples=800, deadline=None, database=None)
@given(blob=st.binary(max_size=120))
def test_fuzz_decode_buffer_raises_only_decode_error(blob: bytes) -> None:
    for codec in CODECS:
        n = len(blob) // codec.size
        try:
            batch, rejects = codec.decode_buffer(blob, device_ids=["f"] * n, times=0.0)
        except DecodeError as exc:
            assert exc.reason == "length" and len(blob) % codec.size
        else:
            assert len(batch) + len(rejects) == n


# -- plain examples of the API contract --------------------------------------------------------------------
def test_decode_many_of_nothing_is_an_empty_batch() -> None:
    for codec in CODECS:
        batch, rejects = codec.decode_many([], device_ids=[], times=0.0)
        assert len(batch) == 0 and rejects == [] and batch.values.shape == (0, len(codec.channels))
        batch, rejects = codec.decode_buffer(b"", device_ids=[], times=0.0)
        assert len(batch) == 0 and rejects == []


def test_decode_buffer_takes_a_2d_uint8_array_and_refuses_strided_views() -> None:
    codec = CODECS[0]
    p = codec.encode(Reading(codec.kind, "x", 7, 0.0, 50.0, 0, tuple(c.low for c in codec.channels)))
    rows = np.frombuffer(p * 3, dtype=np.uint8).reshape(3, codec.size).copy()
    rows[1, 0] = 9  # version 9
    batch, rejects = codec.decode_buffer(rows.data, device_ids=["a", "b", "c"], times=0.0)
    assert batch.device_id.tolist() == ["a", "c"] and [(i, e.reason) for i, e in rejects] == [(1, "version")]
    assert rejects[0][1].data == bytes(rows[1])
    with pytest.raises(ValueError, match="contiguous"):
        codec.decode_buffer(rows[::2].data, device_ids=["a", "c"], times=0.0)


def test_mismatched_columns_are_a_programming_error_not_a_decode_error() -> None:
    codec = CODECS[0]
    p = codec.encode(Reading(codec.kind, "x", 1, 0.0, 50.0, 0, tuple(c.low for c in codec.channels)))
    with pytest.raises(ValueError, match="device ids") as info:
        codec.decode_many([p, p], device_ids=["a"], times=0.0)
    assert not isinstance(info.value, DecodeError)
    with pytest.raises(ValueError, match="times"):
        codec.decode_many([p, p], device_ids=["a", "b"], times=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="device ids"):
        codec.decode_buffer(p * 2, device_ids=["a"], times=0.0)


def test_bad_declarations_are_refused_at_import_time() -> None:
    from firmware_bridge.kernel.records import Channel, Flag

    ok = Channel("a", "u", 0.0, 1.0, ">u2", 0.1)
    with pytest.raises(ValueError, match="big-endian"):
        PayloadCodec(DeviceKind.MANHOLE, 9, (Channel("a", "u", 0.0, 1.0, "<u2"),), ())
    with pytest.raises(ValueError, match="unique"):
        PayloadCodec(DeviceKind.MANHOLE, 9, (ok, ok), ())
    with pytest.raises(ValueError, match="flag bits"):
        PayloadCodec(DeviceKind.MANHOLE, 9, (ok,), (Flag("x", 16),))
    with pytest.raises(ValueError, match="scale"):
        PayloadCodec(DeviceKind.MANHOLE, 9, (Channel("a", "u", 0.0, 1.0, ">u2", 0.0),), ())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=20),  # any code point but lone surrogates, embedded NULs included
            st.sampled_from(["", "\x00", "a\x00", "70b3d57ed0000001", "井盖-07", "\U0001f525x"]),
        ),
        max_size=40,
    )
)
def test_id_array_is_exactly_what_numpy_makes(ids: list[str]) -> None:
    """``payload._id_array`` (one join + UCS-4 encode, issue 12) must give numpy's own array: same dtype
    width, same code points, same trailing-NUL stripping on read."""
    from firmware_bridge.payload import _id_array

    got, want = _id_array(ids), np.asarray(ids, dtype=np.str_)
    assert got.dtype == want.dtype
    assert got.tobytes() == want.tobytes()
    assert got.tolist() == want.tolist()


def test_id_array_falls_back_to_numpy_for_what_it_does_not_lay_out_itself() -> None:
    from firmware_bridge.payload import _id_array

    for ids in (["a", "\ud800"], ("a", "bc"), np.array(["x", "yz"]), []):
        try:
            want = np.asarray(ids, dtype=np.str_)
        except (UnicodeEncodeError, ValueError):
            continue
        got = _id_array(ids)
        assert got.dtype == want.dtype and got.tolist() == want.tolist()
