"""The embedded store's INSERT parameters (cloud.timeseries.sqlite.flat_row_values): every column of every
reading lands in its own column of its own row, for every kind, and a missing value is stored as NULL."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cloud.timeseries import BackendError
from cloud.timeseries.base import table_name, time_ms_column
from cloud.timeseries.sqlite import SQLiteStore, flat_row_values
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import KINDS, spec
from tests.cloud.test_timeseries import make_batch

_BASE = ("device_id", "time_ms", "seq", "battery_pct", "flags", "fw_version")


def _expected_rows(b: ReadingBatch) -> list[tuple[object, ...]]:
    t_ms = time_ms_column(b)
    return [
        (
            str(b.device_id[i]),
            int(t_ms[i]),
            int(b.seq[i]),
            float(b.battery_pct[i]),
            int(b.flags[i]),
            int(b.fw_version[i]),
            *(float(v) for v in b.values[i]),
        )
        for i in range(len(b))
    ]


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("kind", list(KINDS))
def test_flat_values_are_the_rows_one_after_the_other(kind: DeviceKind) -> None:
    b = make_batch(kind, ["dev-a", "dev-b", "dev-c"], 7, seed=3, nan_fraction=0.2)
    flat = flat_row_values(b, time_ms_column(b))
    width = len(_BASE) + len(spec(kind).channel_names)
    assert len(flat) == len(b) * width
    got = [tuple(flat[i * width : (i + 1) * width]) for i in range(len(b))]
    for g, e in zip(got, _expected_rows(b), strict=True):
        assert len(g) == len(e) and all(_same(x, y) for x, y in zip(g, e, strict=True)), (g, e)


@pytest.mark.parametrize("kind", list(KINDS))
def test_stored_rows_equal_the_batch_columns(tmp_path: Path, kind: DeviceKind) -> None:
    """Through ``write`` (several multi-row statements, devices re-ordered): each stored row is its reading,
    NaN stored as NULL."""
    b = make_batch(kind, [f"dev-{i}" for i in range(9)], 40, seed=5, nan_fraction=0.1)
    store = SQLiteStore(tmp_path / "ts.db")
    try:
        assert store.write(b).stored == len(b)
    finally:
        store.close()
    names = spec(kind).channel_names
    cols = ", ".join(f'"{c}"' for c in (*_BASE, *names))
    with sqlite3.connect(tmp_path / "ts.db") as c:
        rows = c.execute(f'SELECT {cols} FROM "{table_name(kind)}"').fetchall()
    want = {
        r[:3]: tuple(None if isinstance(v, float) and math.isnan(v) else v for v in r)
        for r in _expected_rows(b)
    }
    assert len(rows) == len(want)
    for r in rows:
        assert r == want[r[:3]]


def test_values_of_the_wrong_width_are_refused(tmp_path: Path) -> None:
    b = make_batch(DeviceKind.MANHOLE, ["dev-a"], 3)
    wide = ReadingBatch(
        kind=b.kind,
        device_id=b.device_id,
        seq=b.seq,
        time=b.time,
        battery_pct=b.battery_pct,
        flags=b.flags,
        values=np.hstack([b.values, b.values[:, :1]]),
        fw_version=b.fw_version,
    )
    store = SQLiteStore(tmp_path / "ts.db")
    try:
        with pytest.raises(BackendError, match="channel values"):
            store.write(wide)
        assert store.latest(["dev-a"]) == {}
    finally:
        store.close()
