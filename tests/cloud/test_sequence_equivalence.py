"""``cloud.sequence.batch_sequences`` (hashed device codes, radix sort when frames arrive in order) gives
exactly what the previous implementation gave (kept below as the reference: a dict of Python strings and a
three-key ``lexsort``), over random batches: 16-bit wrap, late and out-of-order frames, duplicates, equal
times, NaN times, ids of varied lengths, and forced hash collisions (the fallback path)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud import sequence
from cloud.sequence import SEQ_MODULUS, BatchSequences, _lost, batch_sequences


def reference_batch_sequences(
    device_id: npt.ArrayLike, seq: npt.ArrayLike, time: npt.ArrayLike, battery: npt.ArrayLike
) -> BatchSequences:
    """The implementation before the hashed codes (commit e53ed0c), verbatim but for names."""
    ids = np.asarray(device_id)
    seq_a = np.asarray(seq, dtype=np.int64)
    t = np.asarray(time, dtype=np.float64)
    batt = np.asarray(battery, dtype=np.float64)
    if len(ids) == 0:
        e_i, e_f = np.empty(0, np.int64), np.empty(0, np.float64)
        return BatchSequences([], e_i, e_i, e_f, e_i, e_f, e_i, e_f)
    names_all = ids.tolist()
    names = list(dict.fromkeys(names_all))
    pos = {d: i for i, d in enumerate(names)}
    code = np.fromiter(map(pos.__getitem__, names_all), dtype=np.intp, count=len(names_all))
    order = np.lexsort((seq_a, t, code))
    counts = np.bincount(code, minlength=len(names))
    ends = np.cumsum(counts) - 1
    starts = ends - counts + 1
    seq_s = seq_a[order]
    step = np.empty_like(seq_s)
    step[0] = 0
    np.subtract(seq_s[1:], seq_s[:-1], out=step[1:])
    gap = _lost(step % SEQ_MODULUS)
    gap[starts] = 0
    last = order[ends]
    first = order[starts]
    return BatchSequences(
        device_id=names,
        count=counts.astype(np.int64),
        gaps=np.add.reduceat(gap, starts).astype(np.int64),
        first_time=t[first],
        first_seq=seq_a[first],
        last_time=t[last],
        last_seq=seq_a[last],
        last_battery=batt[last],
    )


def assert_same(got: BatchSequences, want: BatchSequences) -> None:
    assert got.device_id == want.device_id
    for f in ("count", "gaps", "first_time", "first_seq", "last_time", "last_seq", "last_battery"):
        a, b = getattr(got, f), getattr(want, f)
        assert a.dtype == b.dtype, f
        np.testing.assert_array_equal(a, b, err_msg=f)  # NaN == NaN here, bit-for-bit otherwise


@st.composite
def batches(
    draw: Any,
) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.uint32], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    n_dev = draw(st.integers(1, 12))
    devs = draw(
        st.lists(
            st.text(alphabet="0123456789abcdefé设", min_size=1, max_size=20),
            min_size=n_dev,
            max_size=n_dev,
            unique=True,
        )
    )
    n = draw(st.integers(1, 80))
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, n_dev - 1),
                st.integers(0, 40),  # seq offset: repeats and gaps
                st.integers(0, 12),  # time step: equal times (ties broken by seq), out of order
                st.booleans(),  # a NaN time now and then
            ),
            min_size=n,
            max_size=n,
        )
    )
    base = draw(st.sampled_from([0, 100, 65500, 65530]))  # around the 16-bit wrap
    in_order = draw(st.booleans())  # the usual gateway batch: each device's frames in (time, seq) order
    if in_order:
        rows = sorted(rows, key=lambda r: (r[2], r[1]))
    ids = np.array([devs[d] for d, _, _, _ in rows])
    seq = np.array([(base + q) % SEQ_MODULUS for _, q, _, _ in rows], dtype=np.uint32)
    nan_ok = draw(st.booleans())
    t = np.array([np.nan if (nan and nan_ok) else 1.8e9 + 60.0 * s for _, _, s, nan in rows])
    batt = np.array(draw(st.lists(st.floats(0, 100), min_size=n, max_size=n)))
    return ids, seq, t, batt


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_batch_sequences_equals_the_previous_implementation(b: Any) -> None:
    ids, seq, t, batt = b
    assert_same(batch_sequences(ids, seq, t, batt), reference_batch_sequences(ids, seq, t, batt))
    # a list of ids (not a numpy unicode array) takes the dict path: the same answer
    assert_same(batch_sequences(ids.tolist(), seq, t, batt), reference_batch_sequences(ids, seq, t, batt))


@settings(max_examples=100, deadline=None)
@given(batches())
def test_a_hash_collision_falls_back_to_the_exact_path(b: Any) -> None:
    ids, seq, t, batt = b
    saved = sequence._HASH_MULT
    sequence._HASH_MULT = np.zeros_like(saved)  # every id hashes to 0: all collide
    try:
        assert sequence._device_codes(ids) is None or len(set(ids.tolist())) == 1
        assert_same(batch_sequences(ids, seq, t, batt), reference_batch_sequences(ids, seq, t, batt))
    finally:
        sequence._HASH_MULT = saved


def test_the_bench_batches_take_the_fast_paths_and_agree() -> None:
    """The gateway's usual batch (200 devices interleaved, each in time order, wrapping): hashed codes and
    the radix order are used (not the fallbacks), and the figures are the reference's."""
    rng = np.random.default_rng(7)
    devs = np.array([f"70b3d57e00{i:06d}" for i in range(200)])
    ids = np.tile(devs, 10)
    k = np.repeat(np.arange(10), 200) + 65530
    seq = (k % SEQ_MODULUS).astype(np.uint32)
    seq[rng.random(len(seq)) < 0.05] += 3  # some lost frames
    t = 1.8e9 + k * 60.0 + rng.random(len(ids))
    batt = rng.random(len(ids)) * 100
    coded = sequence._device_codes(ids)
    assert coded is not None and coded[0] == devs.tolist()
    order = sequence._frame_order(coded[1], t, seq.astype(np.int64), 200)
    np.testing.assert_array_equal(order, np.lexsort((seq.astype(np.int64), t, coded[1])))
    assert_same(batch_sequences(ids, seq, t, batt), reference_batch_sequences(ids, seq, t, batt))


@pytest.mark.parametrize("width", [1, 64, 200])
def test_id_widths(width: int) -> None:
    """Ids up to the contract's 64 characters hash; wider ones (none valid) take the dict path."""
    ids = np.array(["a" * width, "b" * width, "a" * width])
    got = batch_sequences(ids, [1, 5, 3], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert_same(got, reference_batch_sequences(ids, [1, 5, 3], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
    assert list(got.gaps) == [1, 0]
