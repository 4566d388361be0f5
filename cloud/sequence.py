"""Lost-frame detection over device sequence numbers, vectorised with numpy.

Device counters are 16 bits on the wire and wrap at 65536. For consecutive frames of one device ordered by
time, ``d = (seq - prev) mod 65536``: ``d == 1`` is normal, ``1 < d < 32768`` means ``d - 1`` frames were
lost, ``d == 0`` is a repeat and ``d >= 32768`` a late (reordered) frame; neither of the last two counts as
a gap. One pass over the whole batch: sort by (device, time, seq), diff, reduce per device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SEQ_MODULUS = 1 << 16


@dataclass(frozen=True, slots=True)
class SeqSummary:
    """Per-device outcome of one batch, as parallel arrays (one element per device)."""

    device_id: list[str]
    count: npt.NDArray[np.int64]
    gaps: npt.NDArray[np.int64]
    first_time: npt.NDArray[np.float64]
    last_time: npt.NDArray[np.float64]
    last_seq: npt.NDArray[np.int64]
    last_battery: npt.NDArray[np.float64]


def sequence_summary(
    device_id: npt.NDArray[np.str_],
    seq: npt.ArrayLike,
    time: npt.ArrayLike,
    battery: npt.ArrayLike,
    stored_last_seq: dict[str, int | None],
    stored_last_seen: dict[str, float | None],
) -> SeqSummary:
    """Lost-frame counts per device, vectorised (see the module docstring for the wrap rule).

    ``stored_last_seq``/``stored_last_seen`` are the devices' state before this batch; the first frame of a
    device is compared with the stored sequence number only when it is not older than the stored last seen.
    """
    ids = np.asarray(device_id)
    seq_a = np.asarray(seq, dtype=np.int64)
    t = np.asarray(time, dtype=np.float64)
    batt = np.asarray(battery, dtype=np.float64)
    if len(ids) == 0:
        e_i, e_f = np.empty(0, np.int64), np.empty(0, np.float64)
        return SeqSummary([], e_i, e_i, e_f, e_f, e_i, e_f)
    # the ids as small integers first: one string sort (np.unique) instead of string comparisons inside
    # the three-key sort and a second unique over the sorted strings (measured: 0.85 -> 0.5 ms per
    # 2,000-reading, 200-device batch)
    uniq, code = np.unique(ids, return_inverse=True)
    order = np.lexsort((seq_a, t, code))
    seq_s, t_s, b_s = seq_a[order], t[order], batt[order]
    counts = np.bincount(code, minlength=len(uniq))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    names = uniq.tolist()
    prev = np.empty_like(seq_s)
    prev[1:] = seq_s[:-1]
    has_prev = np.ones(len(seq_s), dtype=bool)
    start_prev = np.array(
        [-1 if stored_last_seq.get(n) is None else int(stored_last_seq[n] or 0) for n in names],
        dtype=np.int64,
    )
    start_seen = np.array(
        [np.nan if stored_last_seen.get(n) is None else float(stored_last_seen[n] or 0.0) for n in names],
        dtype=np.float64,
    )
    usable = (start_prev >= 0) & ~(t_s[starts] < start_seen)  # NaN compares False: no stored time -> usable
    prev[starts] = np.where(usable, start_prev, 0)
    has_prev[starts] = usable
    d = (seq_s - prev) % SEQ_MODULUS
    gap = np.where(has_prev & (d > 1) & (d < SEQ_MODULUS // 2), d - 1, 0)
    ends = starts + counts - 1
    return SeqSummary(
        device_id=names,
        count=counts.astype(np.int64),
        gaps=np.add.reduceat(gap, starts).astype(np.int64),
        first_time=t_s[starts],
        last_time=t_s[ends],
        last_seq=seq_s[ends],
        last_battery=b_s[ends],
    )
