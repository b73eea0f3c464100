"""Backoff delays grow exponentially, stay capped, and each jitter keeps to its bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipyard.core import ConfigError
from shipyard.resilience.backoff import Backoff, backoff_delay, exponential_delay

attempts = st.integers(min_value=1, max_value=5000)
bases = st.floats(min_value=0.0, max_value=5.0)
multipliers = st.floats(min_value=1.0, max_value=10.0)
caps = st.floats(min_value=5.0, max_value=600.0)
randoms = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
previous = st.none() | st.floats(min_value=0.0, max_value=600.0)


def delay(attempt: int, jitter: str | None, r: float = 0.5, **overrides: float | None) -> float:
    params: dict[str, float | None] = {
        "base_delay": 0.1,
        "multiplier": 2.0,
        "max_delay": 10.0,
        "previous_delay": None,
    }
    params.update(overrides)
    return backoff_delay(attempt, jitter=jitter, random=lambda: r, **params)  # type: ignore[arg-type]


def test_without_jitter_delay_doubles_from_the_base_then_stops_at_the_cap() -> None:
    assert [delay(n, None) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert delay(8, None) == 10.0
    assert delay(10_000, None) == 10.0  # no float overflow on absurd attempt numbers


def test_full_jitter_scales_the_exponential_by_the_random_draw() -> None:
    assert delay(3, "full", r=0.0) == 0.0
    assert delay(3, "full", r=0.5) == 0.2


def test_equal_jitter_keeps_at_least_half_of_the_exponential() -> None:
    assert delay(3, "equal", r=0.0) == 0.2
    assert delay(3, "equal", r=0.5) == 0.30000000000000004


def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    assert delay(1, "decorrelated", r=0.0) == 0.1
    assert delay(2, "decorrelated", r=0.999, previous_delay=1.0) < 3.0
    assert delay(2, "decorrelated", r=0.999, previous_delay=1.0) > 2.9
    assert delay(9, "decorrelated", r=0.999, previous_delay=9.0) == 10.0


@given(attempts, bases, multipliers, caps, randoms)
def test_no_jitter_is_the_capped_exponential(
    attempt: int, base: float, multiplier: float, cap: float, r: float
) -> None:
    result = backoff_delay(
        attempt,
        base_delay=base,
        multiplier=multiplier,
        max_delay=cap,
        jitter=None,
        previous_delay=None,
        random=lambda: r,
    )
    assert result == exponential_delay(attempt, base, multiplier, cap)
    assert 0.0 <= result <= cap


@given(attempts, bases, multipliers, caps, randoms)
def test_full_jitter_stays_between_zero_and_the_capped_exponential(
    attempt: int, base: float, multiplier: float, cap: float, r: float
) -> None:
    ceiling = exponential_delay(attempt, base, multiplier, cap)
    result = backoff_delay(
        attempt,
        base_delay=base,
        multiplier=multiplier,
        max_delay=cap,
        jitter="full",
        previous_delay=None,
        random=lambda: r,
    )
    assert 0.0 <= result <= ceiling <= cap


@given(attempts, bases, multipliers, caps, randoms)
def test_equal_jitter_stays_between_half_and_all_of_the_capped_exponential(
    attempt: int, base: float, multiplier: float, cap: float, r: float
) -> None:
    ceiling = exponential_delay(attempt, base, multiplier, cap)
    result = backoff_delay(
        attempt,
        base_delay=base,
        multiplier=multiplier,
        max_delay=cap,
        jitter="equal",
        previous_delay=None,
        random=lambda: r,
    )
    assert ceiling / 2 <= result <= ceiling <= cap


@given(attempts, bases, caps, randoms, previous)
def test_decorrelated_jitter_stays_between_base_and_three_times_previous_and_capped(
    attempt: int, base: float, cap: float, r: float, prev: float | None
) -> None:
    result = backoff_delay(
        attempt,
        base_delay=base,
        multiplier=2.0,
        max_delay=cap,
        jitter="decorrelated",
        previous_delay=prev,
        random=lambda: r,
    )
    upper = 3 * max(base if prev is None else prev, base)
    assert min(base, cap) <= result <= min(upper, cap) + 1e-9


def test_a_backoff_schedule_doubles_with_equal_jitter_up_to_its_cap() -> None:
    backoff = Backoff.checked("base", 1.0, "cap", 4.0, random=lambda: 0.5)

    assert [backoff.delay(n) for n in range(1, 5)] == [0.75, 1.5, 3.0, 3.0]


def test_a_backoff_schedule_whose_cap_is_below_its_base_is_refused_naming_the_cap() -> None:
    with pytest.raises(ConfigError) as info:
        Backoff.checked("retry_base_delay", 5.0, "retry_max_delay", 1.0)

    assert info.value.field == "retry_max_delay"
