"""The engine's array-at-a-time shortcuts give exactly what the plain forms give.

Device rows are found by hashing ids (``kindstate.id_hashes``) and confirming each hit by comparing the
ids; levels are chosen by ``rulekit.select`` instead of ``np.select``; alerts of a batch equal the
contract's own validation of them. Each is checked against the plain form it replaces.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.contract import AlertEvent
from alerts.detection import kindstate
from alerts.detection.engine import DetectionEngine
from alerts.detection.kindstate import KindState, id_hashes
from alerts.detection.profiles import ProfileSet
from alerts.detection.rulekit import band, band_low, select
from firmware_bridge.kernel.records import DeviceKind
from tests.alerts.detection.detect_helpers import T0, batch, reading

K = DeviceKind
HEX = "0123456789abcdef"
ids_st = st.lists(
    st.one_of(
        st.text(alphabet=HEX, min_size=16, max_size=16),  # canonical hardware ids
        st.text(alphabet=HEX + "ABC-_.:", min_size=1, max_size=20),  # other valid ids, some past 16
        st.sampled_from(["bad id", "W1\n", "", "x" * 65]),  # invalid: never get a row
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60)
@given(st.lists(ids_st, min_size=1, max_size=4))
def test_rows_by_hash_equal_rows_by_dict(batches: list[list[str]]) -> None:
    """Both ways a batch finds its rows (the dict for a few ids, hashes and arrays for many) give each
    id its row, new valid ids one row each in order of appearance, invalid ids none."""
    few = kindstate._FEW
    tables = []
    try:
        for limit in (few, 0):  # 0: every batch takes the array path
            kindstate._FEW = limit
            ks = KindState(K.MANHOLE, ProfileSet(), 4)
            for ids in batches:
                rows = ks.rows_for(np.asarray(ids, dtype=np.str_))
                for d, r in zip(ids, rows.tolist(), strict=True):
                    assert r == ks.index.get(d, -1)
                    assert (r >= 0) == (d in ks.index)
                assert len(set(ks.ids)) == len(ks.ids)  # one row per device, never two
            tables.append(ks.ids)
    finally:
        kindstate._FEW = few
    assert tables[0] == tables[1]


def test_id_hash_ignores_the_array_width_and_the_trailing_newline_id_is_rejected() -> None:
    a = id_hashes(np.array(["w1", "abcd"], dtype="U4"))
    b = id_hashes(np.array(["w1", "abcd"], dtype="U16"))
    assert a is not None and b is not None and (a == b).all() and a[0] != a[1]
    assert id_hashes(np.array(["w1", "a" * 20])) is None  # past 16 characters: the dict finds them
    eng = DetectionEngine()
    ev = eng.process(batch([reading(K.WRISTBAND, "W1\n", 1, T0, "sos")]), now=T0)
    assert ev == [] and eng.counters.rejected_total == 1


@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=30),
    st.floats(-10, 10),
    st.floats(-10, 10),
    st.floats(-10, 10),
)
def test_select_and_bands_equal_numpy_select(xs: list[float], a: float, b: float, c: float) -> None:
    x = np.asarray(xs)
    conds = [x >= a, x <= b, x > c]
    assert (select(conds, [3, -1, 2], 0) == np.select(conds, [3, -1, 2], 0).astype(np.int8)).all()
    for fn, cmp in ((band, (np.greater_equal, np.greater)), (band_low, (np.less_equal, np.less))):
        ge, gt = cmp
        ref = np.select([ge(x, b), ge(x, a), gt(x, c)], [3, 2, -1], 0)
        ref = np.where(np.isfinite(x), ref, -2).astype(np.int8)
        got = fn(x, a, b, c)
        assert got.dtype == np.int8 and (got == ref).all()


def test_alert_steps_are_what_the_contract_validates() -> None:
    eng = DetectionEngine()
    rs = [reading(K.WRISTBAND, f"{i:016x}", 1, T0 + i, "worn", "sos") for i in range(5)]
    ev = eng.process(batch(rs), now=T0 + 10)
    assert len(ev) == 5
    assert ev == [AlertEvent.model_validate(e.model_dump()) for e in ev]
