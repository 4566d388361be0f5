"""The jittered exponential backoff both transports use (docs/framing.md, "Transports")."""

from __future__ import annotations

import doctest
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import firmware_bridge.backoff as backoff_module
from firmware_bridge.transports import Backoff


def test_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(initial=0.5, maximum=4.0, rng=random.Random(0))
    ceilings = []
    for _ in range(7):
        ceilings.append(b.ceiling())
        b.next()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.ceiling() == 0.5 and b.attempt == 0


@given(st.floats(0.01, 5), st.floats(1, 60), st.integers(0, 200), st.integers(0, 2**32))
def test_every_delay_is_between_half_and_all_of_the_ceiling(
    initial: float, cap: float, n: int, seed: int
) -> None:
    b = Backoff(initial=min(initial, cap), maximum=cap, rng=random.Random(seed))
    for _ in range(n % 50):
        ceiling = b.ceiling()
        assert ceiling / 2 <= b.next() <= ceiling <= cap


def test_jitter_spreads_gateways_apart() -> None:
    delays = {round(Backoff(initial=1, maximum=30, rng=random.Random(s)).next(), 6) for s in range(50)}
    assert len(delays) == 50 and min(delays) >= 0.5 and max(delays) <= 1.0


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=0, maximum=1)
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=2, maximum=1)
    with pytest.raises(ValueError, match="factor"):
        Backoff(initial=1, maximum=2, factor=0.5)


def test_docstring_example() -> None:
    result = doctest.testmod(backoff_module)
    assert result.failed == 0 and result.attempted >= 1
