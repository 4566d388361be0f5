"""The binary uplink body (``alerts/uplink_body.py``, docs/contract.md#binary-body): round trips against the
JSON body, every malformed body refused with a reason naming the field, and the worked example of the docs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.contract import MAX_RECORDS_PER_BATCH, AlertEvent, GatewayStatus, TelemetryBlock, UplinkBatch
from alerts.uplink_body import (
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    BodyError,
    block_batch,
    decode_batch,
    decode_block,
    encode_batch,
    encode_block,
    media_type,
    merge_blocks,
    sniff,
)
from firmware_bridge.kernel.events import AlertPhase, EventType, Severity, alert_id
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import spec

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_790_000_000.0
M = DeviceKind.MANHOLE


def readings(kind: DeviceKind, ids: list[str], *, t0: float = T0) -> ReadingBatch:
    n, c = len(ids), len(spec(kind).channels)
    values = np.arange(n * c, dtype=np.float64).reshape(n, c) / 4
    if n:
        values[0, -1] = np.nan  # not measured
    return ReadingBatch(
        kind=kind,
        device_id=np.array(ids, dtype=np.str_),
        seq=np.arange(n, dtype=np.uint32) + 65530,
        time=t0 + np.arange(n, dtype=np.float64) * 60.0,
        battery_pct=np.full(n, 87.5),
        flags=np.arange(n, dtype=np.uint32),
        values=values,
        fw_version=np.full(n, 0x0102, np.uint16),
    )


def a_step(device_id: str = "70b3d57ed0000001") -> AlertEvent:
    ep = round(T0 * 1000)
    return AlertEvent(
        alert_id=alert_id(device_id, EventType.COVER_OPEN, ep),
        device_id=device_id,
        kind=M,
        event_type=EventType.COVER_OPEN,
        severity=Severity.HIGH,
        phase=AlertPhase.RAISED,
        episode_ms=ep,
        time=T0,
        frame_time=T0 - 0.5,
        value=91.0,
        message="tilt 91°",
    )


def sample(**kw: Any) -> UplinkBatch:
    fields: dict[str, Any] = {
        "batch_id": "gw-1-00000042",
        "gateway_id": "gw-1",
        "sent_at": T0 + 1,
        "telemetry": [TelemetryBlock.from_batch(readings(M, ["70b3d57ed0000001", "70b3d57ed0000002"] * 2))],
        "alerts": [a_step()],
        "status": {"version": "0.1.0", "frames_total": 3},
    }
    fields.update(kw)
    return UplinkBatch.model_validate(fields)


def doc_of(batch: UplinkBatch) -> dict[str, Any]:
    out: dict[str, Any] = msgpack.unpackb(encode_batch(batch))
    return out


def refused(doc: object) -> BodyError:
    with pytest.raises(BodyError) as info:
        decode_batch(doc if isinstance(doc, bytes) else msgpack.packb(doc), MSGPACK_CONTENT_TYPE)
    assert info.value.status == 422
    return info.value


# -- round trips -------------------------------------------------------------------------------------------
_ids = st.text(alphabet="0123456789abcdefABCDEF_.:-", min_size=1, max_size=64)


@st.composite
def batches(draw: st.DrawFn) -> UplinkBatch:
    blocks = []
    for kind in draw(st.lists(st.sampled_from(list(DeviceKind)), max_size=3)):
        n = draw(st.integers(0, 40))
        c = len(spec(kind).channels)
        pool = draw(st.lists(_ids, min_size=1, max_size=5))
        floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
        values = np.array(draw(st.lists(floats, min_size=n * c, max_size=n * c)), dtype=np.float64)
        rb = ReadingBatch(
            kind=kind,
            device_id=np.array([draw(st.sampled_from(pool)) for _ in range(n)] or [], dtype=np.str_),
            seq=np.array(draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n)), np.uint32),
            time=np.array(draw(st.lists(st.floats(0, 4_102_444_800), min_size=n, max_size=n)), np.float64),
            battery_pct=np.array(draw(st.lists(st.floats(0, 100), min_size=n, max_size=n)), np.float64),
            flags=np.array(draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n)), np.uint32),
            values=values.reshape(n, c),
            fw_version=np.array(draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n)), np.uint16),
        )
        blocks.append(TelemetryBlock.from_batch(rb))
    alerts = [a_step(d) for d in draw(st.lists(st.sampled_from(["70b3d57ed0000001", "x:1"]), max_size=3))]
    status = draw(st.none() | st.just({"version": "1", "outbox_depth": 5, "unknown_key": 1}))
    return UplinkBatch(
        batch_id=draw(st.text(alphabet="abcXYZ019_-", min_size=8, max_size=64)),
        gateway_id=draw(_ids),
        sent_at=draw(st.floats(0, 4_102_444_800)),
        contract_version=draw(st.sampled_from([1, 2])),
        telemetry=blocks,
        alerts=alerts,
        status=None if status is None else GatewayStatus.model_validate(status),
    )


@settings(max_examples=60, deadline=None)
@given(batches())
def test_binary_and_json_bodies_read_as_the_same_batch(batch: UplinkBatch) -> None:
    """Whatever the readings (empty blocks, NaN = not measured, Infinity sent as not measured, ids repeated
    or not), the binary body and the JSON body of a batch decode to the same document and arrays."""
    from_json = decode_batch(batch.model_dump_json().encode(), JSON_CONTENT_TYPE)
    from_binary = decode_batch(encode_batch(batch), MSGPACK_CONTENT_TYPE)
    assert from_binary == from_json
    assert from_binary.model_dump_json() == from_json.model_dump_json()
    for a, b in zip(from_binary.telemetry, from_json.telemetry, strict=True):
        x, y = a.to_batch(), b.to_batch()
        assert x.kind is y.kind and x.device_id.tolist() == y.device_id.tolist()
        assert x.seq.dtype == y.seq.dtype == np.uint32 and np.array_equal(x.seq, y.seq)
        assert np.array_equal(x.values, y.values, equal_nan=True) and x.values.flags.writeable
        assert list(a.device_id) == list(b.device_id) and len(a) == len(b)


def test_a_binary_block_reads_like_a_json_one_downstream() -> None:
    """What the ingest service does with a block works on an array-backed one: ids as str, a copy with
    canonical ids converts the new ids (not the cached array), arrays are writable, JSON dump has nulls."""
    batch = decode_batch(encode_batch(sample()), MSGPACK_CONTENT_TYPE)
    block = batch.telemetry[0]
    assert set(block.device_id) == {"70b3d57ed0000001", "70b3d57ed0000002"}
    assert all(type(d) is str for d in block.device_id)
    renamed = block.model_copy(update={"device_id": [d.upper() for d in block.device_id]})
    assert renamed.to_batch().device_id.tolist() == [d.upper() for d in block.device_id]
    assert block.to_batch().device_id.tolist() == list(block.device_id)
    rb = block.to_batch()
    rb.seq[0] = 1  # the arrays belong to this batch, not to the body's bytes
    assert '"temperature_c":[null,' in block.model_dump_json()
    assert batch.n_records == 5 and batch.alerts == [a_step()] and batch.status is not None


def test_block_batch_reads_back_what_encode_block_wrote() -> None:
    rb = readings(DeviceKind.WRISTBAND, ["a", "b", "a"])
    back = block_batch(encode_block(rb))
    assert back.device_id.tolist() == ["a", "b", "a"] and np.array_equal(
        back.values, rb.values, equal_nan=True
    )
    empty = block_batch(encode_block(readings(M, [])))
    assert len(empty) == 0 and empty.values.shape == (0, len(spec(M).channels))


def test_merge_blocks_equals_encoding_the_concatenation() -> None:
    """Joining stored blocks' column bytes and re-mapping their dictionaries gives the block of all rows."""
    parts = [readings(M, ["a", "b", "a"]), readings(M, []), readings(M, ["c", "a"], t0=T0 + 600)]
    merged = decode_block(msgpack.unpackb(merge_blocks([encode_block(p) for p in parts])))
    whole = TelemetryBlock.from_batch(ReadingBatch.concat(parts))
    assert merged == whole and list(merged.device_id) == ["a", "b", "a", "c", "a"]
    with pytest.raises(ValueError, match="cannot merge"):
        merge_blocks([encode_block(parts[0]), encode_block(readings(DeviceKind.WRISTBAND, ["a"]))])


# -- formats -----------------------------------------------------------------------------------------------
def test_content_types_and_payload_sniffing() -> None:
    assert media_type(None) == media_type("") == JSON_CONTENT_TYPE  # as FastAPI read a body before
    assert media_type("application/json; charset=utf-8") == JSON_CONTENT_TYPE
    assert media_type("application/problem+json") == JSON_CONTENT_TYPE
    assert media_type("Application/Vnd.Vigil.Uplink+Msgpack") == MSGPACK_CONTENT_TYPE
    assert media_type("application/msgpack") is None and media_type("text/plain") is None
    assert sniff(sample().model_dump_json().encode()) == JSON_CONTENT_TYPE
    assert sniff(b"\n  " + sample().model_dump_json().encode()) == JSON_CONTENT_TYPE
    assert sniff(encode_batch(sample())) == MSGPACK_CONTENT_TYPE
    assert sniff(msgpack.packb({f"k{i}": i for i in range(20)})) == MSGPACK_CONTENT_TYPE  # map16
    assert sniff(b"[1,2]") is None and sniff(b"") is None and sniff(msgpack.packb([1])) is None


def test_unknown_content_type_is_415_and_bad_json_422() -> None:
    with pytest.raises(BodyError) as info:
        decode_batch(b"{}", "text/plain")
    assert info.value.status == 415 and info.value.errors[0]["type"] == "unsupported_media_type"
    with pytest.raises(BodyError) as info:
        decode_batch(b'{"batch_id": "gw-1-00000042", "gateway_id": "gw 1"}', JSON_CONTENT_TYPE)
    assert info.value.status == 422 and info.value.batch_id == "gw-1-00000042"
    assert {("gateway_id",), ("sent_at",)} <= {tuple(e["loc"]) for e in info.value.errors}


# -- malformed binary bodies -------------------------------------------------------------------------------
def _set(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = doc_of(sample())
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()
_T = ("telemetry", 0)


@pytest.mark.parametrize(
    ("path", "value", "loc", "kind"),
    [
        (("extra",), 1, ("extra",), "extra_forbidden"),
        (("batch_id",), _DELETE, ("batch_id",), "missing"),
        (("sent_at",), float("nan"), ("sent_at",), "finite_number"),
        (("telemetry",), {}, ("telemetry",), "list_type"),
        (("alerts", 0, "severity"), 9, ("alerts", 0, "severity"), "enum"),
        ((*_T, "units"), 1, (*_T, "units"), "extra_forbidden"),
        ((*_T, "seq"), _DELETE, (*_T, "seq"), "missing"),
        ((*_T, "kind"), "toaster", (*_T, "kind"), "enum"),
        ((*_T, "n"), -1, (*_T, "n"), "int_range"),
        ((*_T, "n"), True, (*_T, "n"), "int_range"),
        ((*_T, "n"), 5, (*_T, "device_index"), "length_mismatch"),
        ((*_T, "time"), ["<f4", b"\0" * 16], (*_T, "time"), "dtype"),
        ((*_T, "time"), ["f8", b"\0" * 32], (*_T, "time"), "dtype"),
        ((*_T, "time"), ["<f8", b"\0" * 31], (*_T, "time"), "length_mismatch"),
        ((*_T, "time"), [1.0, 2.0, 3.0, 4.0], (*_T, "time"), "column_type"),
        ((*_T, "time"), ["<f8", np.array([T0, np.nan, T0, T0]).tobytes()], (*_T, "time", 1), "range"),
        ((*_T, "time"), ["<f8", np.array([T0, T0, -1, T0]).tobytes()], (*_T, "time", 2), "range"),
        ((*_T, "battery_pct"), ["<f8", np.array([1, 2, 101, 3.0]).tobytes()], (*_T, "battery_pct", 2),
         "range"),
        ((*_T, "device_ids"), ["a", "b", "c", "d", "e"], (*_T, "device_ids"), "dictionary"),
        ((*_T, "device_ids"), [], (*_T, "device_ids"), "dictionary"),
        ((*_T, "device_ids"), ["ok", "not ok"], (*_T, "device_ids", 1), "string_pattern_mismatch"),
        ((*_T, "device_ids"), ["ok", 7], (*_T, "device_ids", 1), "string_pattern_mismatch"),
        ((*_T, "device_ids"), ["ok", "x" * 65], (*_T, "device_ids", 1), "string_pattern_mismatch"),
        ((*_T, "device_index"), ["<u2", np.array([0, 1, 2, 0], "<u2").tobytes()], (*_T, "device_index", 2),
         "index"),
        ((*_T, "channels", "tilt_deg"), ["<f8", np.array([1, np.inf, 0, 0.0]).tobytes()],
         (*_T, "channels", "tilt_deg", 1), "finite_number"),
        ((*_T, "channels", "tilt_deg"), ["<i8", b"\0" * 32], (*_T, "channels", "tilt_deg"), "dtype"),
        ((*_T, "channels", "tilt_deg"), _DELETE, (*_T, "channels"), "channels"),
        ((*_T, "channels", "smoke_db_m"), ["<f8", b"\0" * 32], (*_T, "channels"), "channels"),
        ((*_T, "channels"), [], (*_T, "channels"), "channels"),
    ],
)  # fmt: skip
def test_every_malformed_field_is_refused_by_name(
    path: tuple[Any, ...], value: Any, loc: tuple[Any, ...], kind: str
) -> None:
    err = refused(_set(path, value))
    assert (tuple(err.errors[0]["loc"]), err.errors[0]["type"]) == (loc, kind), err.errors
    assert err.batch_id == ("gw-1-00000042" if path != ("batch_id",) else None)
    assert err.detail.startswith(".".join(str(p) for p in loc))


def test_narrower_dtypes_are_accepted_and_widened() -> None:
    doc = doc_of(sample())
    blk = doc["telemetry"][0]
    blk["seq"] = ["<u2", np.array([1, 2, 3, 65535], "<u2").tobytes()]
    blk["device_index"] = ["<u1", bytes([0, 1, 0, 1])]
    blk["channels"]["tilt_deg"] = ["<f4", np.array([1.5, np.nan, 2, 3], "<f4").tobytes()]
    rb = decode_batch(msgpack.packb(doc), MSGPACK_CONTENT_TYPE).telemetry[0].to_batch()
    assert rb.seq.dtype == np.uint32 and rb.seq.tolist() == [1, 2, 3, 65535]
    assert np.array_equal(rb.values[:, 0], [1.5, np.nan, 2, 3], equal_nan=True)


def test_undecodable_bodies_are_refused_with_what_is_wrong() -> None:
    body = encode_batch(sample())
    assert refused(body + b"\x00\x01").errors[0]["type"] == "trailing_bytes"
    assert refused(body[:-7]).errors[0]["type"] == "msgpack_invalid"
    assert refused(b"\xc1").errors[0]["type"] == "msgpack_invalid"  # a reserved byte
    assert refused(msgpack.packb([1, 2])).errors[0]["type"] == "msgpack_type"
    # an array header declaring 2^32-1 items in a 5-byte body: refused before anything is allocated
    assert refused(b"\x81\xa1a\xdd\xff\xff\xff\xff").errors[0]["type"] == "msgpack_invalid"
    dup = b"\x82" + msgpack.packb("batch_id") + msgpack.packb("a" * 8) + msgpack.packb("batch_id") + b"\xa1b"
    assert refused(dup).errors[0]["type"] == "duplicate_key"
    ext = _set(("sent_at",), msgpack.ExtType(5, b"12345678"))
    assert refused(ext).errors[0]["loc"] == ("sent_at",)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_bodies_are_refused_never_crash(data: st.DataObject) -> None:
    """Any byte changed, dropped or inserted in a valid body: a valid batch or a :class:`BodyError`, never
    another exception (which the HTTP route would turn into a 500 and the MQTT worker into a retry)."""
    body = bytearray(encode_batch(sample()))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        op = data.draw(st.sampled_from(["set", "drop", "insert"]))
        if op == "set":
            body[i] = data.draw(st.integers(0, 255))
        elif op == "drop":
            del body[i]
        else:
            body.insert(i, data.draw(st.integers(0, 255)))
    try:
        decode_batch(bytes(body), MSGPACK_CONTENT_TYPE)
    except BodyError as exc:
        assert exc.status == 422 and exc.errors and exc.detail


def test_too_many_records_is_refused_before_a_column_is_read() -> None:
    """A block declaring more rows than the limit is refused on its ``n``, before its columns' bytes are
    looked at (the bound comes first); so is a batch whose blocks together exceed it."""
    err = refused(_set((*_T, "n"), MAX_RECORDS_PER_BATCH + 1))
    assert err.errors[0]["loc"] == (*_T, "n")
    doc = doc_of(sample())
    doc["telemetry"] = [{**doc["telemetry"][0], "n": MAX_RECORDS_PER_BATCH // 2}] * 2
    assert refused(doc).errors[0]["type"] == "too_many"


def test_a_refused_body_stores_nothing_because_nothing_is_returned() -> None:
    """The decoder is all-or-nothing: one bad column anywhere and no batch object exists to store."""
    doc = doc_of(sample(telemetry=[TelemetryBlock.from_batch(readings(M, ["a", "b"]))] * 3))
    doc["telemetry"][2]["flags"] = ["<u4", b"\0"]
    assert refused(doc).errors[0]["loc"] == ("telemetry", 2, "flags")


# -- the worked example in the docs ------------------------------------------------------------------------
def example_body() -> bytes:
    """The docs' worked example: one manhole reading, no alert, no status."""
    rb = readings(M, ["70b3d57ed0000001"])
    batch = UplinkBatch(
        batch_id="gw-1-00000042", gateway_id="gw-1", sent_at=T0, telemetry=[TelemetryBlock.from_batch(rb)]
    )
    return encode_batch(batch)


def hexdump(data: bytes) -> str:
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{off:08x}  {chunk[:8].hex(' '):<23}  {chunk[8:].hex(' '):<23}  |{text}|")
    return "\n".join(lines)


def test_the_docs_worked_example_is_what_the_encoder_writes() -> None:
    """docs/contract.md shows the hex dump of :func:`example_body`: regenerate it with
    ``python -c 'from tests.alerts.test_uplink_body import *; print(hexdump(example_body()))'``."""
    doc = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- hexdump:begin -->\n```text\n(.*?)\n```\n<!-- hexdump:end -->", doc, re.S)
    assert m is not None, "docs/contract.md lost its worked example"
    assert m.group(1) == hexdump(example_body())
    assert decode_batch(example_body(), MSGPACK_CONTENT_TYPE).telemetry[0].to_batch().seq.tolist() == [65530]
