"""The worked examples of ``docs/payloads.md`` decode to the values the document states.

Source of the vectors: ``docs/payloads.md`` (Vigil's own payload datasheet). Each ```` ```hex ```` block is
followed by a ```` ```json ```` block; the hex must decode, through both the library and
``vigil frame decode``, to every key/value of that JSON, so the datasheet cannot rot.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import vigil_cli
from firmware_bridge.registry import KINDS, decode_payload, spec

DOC = Path(__file__).resolve().parents[2] / "docs" / "payloads.md"
_PAIR = re.compile(r"```hex\n(?P<hex>[^`]+?)\n```.*?```json\n(?P<json>.+?)\n```", re.S)


def _examples() -> list[tuple[bytes, dict[str, object]]]:
    text = DOC.read_text(encoding="utf-8")
    return [(bytes.fromhex(m["hex"]), json.loads(m["json"])) for m in _PAIR.finditer(text)]


EXAMPLES = _examples()


def test_the_document_has_an_example_for_every_kind() -> None:
    kinds = {doc["kind"] for _, doc in EXAMPLES}
    assert kinds == {k.value for k in KINDS}  # a new kind needs its worked example in the datasheet
    assert len(EXAMPLES) == DOC.read_text(encoding="utf-8").count("```hex\n") >= len(KINDS)


@pytest.mark.parametrize(("payload", "doc"), EXAMPLES, ids=[f"{d['kind']}-{d['seq']}" for _, d in EXAMPLES])
def test_worked_example_decodes_to_the_documented_values(payload: bytes, doc: dict[str, object]) -> None:
    r = decode_payload(payload, device_id="doc", time=0.0)
    s = spec(r.kind)
    assert len(payload) == s.codec.size
    assert r.kind.value == doc["kind"]
    assert r.seq == doc["seq"]
    assert r.battery_pct == doc["battery_pct"]
    assert f"{r.fw_version >> 8}.{r.fw_version & 0xFF}" == doc["fw_version"]
    assert [f.name for f in s.flags if r.has_flag(f.name)] == doc["flags"]
    assert r.flags == int(str(doc["flags_raw"]), 16)
    values = doc["values"]
    assert isinstance(values, dict) and list(values) == list(s.channel_names)
    for name, want in values.items():
        got = r.value(name)
        if want is None:
            assert math.isnan(got), name
        else:
            assert got == want, name  # exact: decoded values are clean decimals
    # the encoder produces the documented bytes back from the documented values
    assert s.codec.encode(r) == payload


@pytest.mark.parametrize(("payload", "doc"), EXAMPLES, ids=[f"{d['kind']}-{d['seq']}" for _, d in EXAMPLES])
def test_vigil_frame_decode_prints_the_documented_json(
    payload: bytes, doc: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert vigil_cli.main(["frame", "decode", payload.hex(" ").replace(" ", ""), "--time", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key, want in doc.items():
        assert out[key] == want, key


_ROW = re.compile(
    r"^\| (?P<off>\d+) \| (?P<size>\d+) \| `(?P<name>\w+)` \| (?P<type>[ui]\d+)(?: BE)? \| "
    r"(?P<scale>[\d.e-]+) \| "
    r"(?P<unit>[^|]+) \| (?P<low>-?[\d.]+) \.\. (?P<high>-?[\d.]+) \|",
    re.M,
)
_SECTION = re.compile(r"^## (\w+)\n(.*?)(?=^## )", re.S | re.M)


@pytest.mark.parametrize("kind", [k.value for k in KINDS])
def test_channel_tables_match_the_declarations(kind: str) -> None:
    """Offsets, sizes, types, scales, units and ranges in the datasheet are the codec's, row for row."""
    import numpy as np

    sections = {m[1]: m[2] for m in _SECTION.finditer(DOC.read_text(encoding="utf-8"))}
    assert kind in sections, f"docs/payloads.md has no '## {kind}' section"
    section = sections[kind]
    rows = list(_ROW.finditer(section))
    codec = spec(kind).codec
    assert [r["name"] for r in rows] == [c.name for c in codec.channels]
    for r, c in zip(rows, codec.channels, strict=True):
        dt = np.dtype(c.wire)
        fields = codec.dtype.fields
        assert fields is not None
        assert int(r["off"]) == fields[c.name][1], c.name
        assert int(r["size"]) == dt.itemsize, c.name
        assert r["type"] == f"{dt.kind}{8 * dt.itemsize}", c.name
        assert float(r["scale"]) == c.scale, c.name
        assert r["unit"].strip() == c.unit, c.name
        assert (float(r["low"]), float(r["high"])) == (c.low, c.high), c.name
    flags = re.findall(r"^\| (\d+) \| `0x([0-9a-f]{4})` \| `(\w+)` \|", section, re.M)
    assert [(int(b), int(m, 16), n) for b, m, n in flags] == [(f.bit, f.mask, f.name) for f in codec.flags]


def test_docstring_examples_run() -> None:
    """The examples in ``firmware_bridge/payload.py``'s docstring are the doc's manhole example, run."""
    import doctest

    import firmware_bridge.payload

    result = doctest.testmod(firmware_bridge.payload, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0
