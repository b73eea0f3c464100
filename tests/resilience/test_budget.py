"""A retry budget allows a floor of retries plus a share of recent calls, and no more."""

from __future__ import annotations

import pytest

from shipyard import ConfigError, ManualClock
from shipyard.resilience.budget import RetryBudget


def withdraw_all(budget: RetryBudget) -> int:
    taken = 0
    while budget.try_withdraw():
        taken += 1
        assert taken < 10_000, "budget never ran out"
    return taken


def test_reserve_allows_min_retries_per_second_times_window_with_no_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1.0, window=10.0, clock=ManualClock())
    assert withdraw_all(budget) == 10


def test_each_call_earns_ratio_of_a_retry() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, window=10.0, clock=ManualClock())
    for _ in range(50):
        budget.deposit()
    assert withdraw_all(budget) == 10


def test_a_spent_budget_refuses_and_takes_nothing() -> None:
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, window=10.0, clock=ManualClock())
    budget.deposit()
    budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    budget.deposit()
    budget.deposit()
    assert budget.try_withdraw()


def test_calls_and_retries_age_out_of_the_window() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window=10.0, clock=clock)
    for _ in range(5):
        budget.deposit()
    clock.advance(5.0)
    assert withdraw_all(budget) == 5
    clock.advance(6.0)  # the deposits (t=0) left the window; the withdrawals (t=5) did not
    for _ in range(5):
        budget.deposit()
    assert withdraw_all(budget) == 0
    clock.advance(5.0)  # now the withdrawals left too
    assert withdraw_all(budget) == 5


def test_a_long_idle_gap_resets_the_budget() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.5, window=4.0, clock=clock)
    assert withdraw_all(budget) == 2
    clock.advance(1_000_000.0)
    assert budget.available == 2.0
    assert withdraw_all(budget) == 2


def test_float_ratios_do_not_lose_a_whole_retry_to_rounding() -> None:
    budget = RetryBudget(ratio=0.3, min_retries_per_second=0.0, window=10.0, clock=ManualClock())
    for _ in range(10):
        budget.deposit()
    assert withdraw_all(budget) == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"min_retries_per_second": -1}, "min_retries_per_second"),
        ({"window": 0}, "window"),
    ],
)
def test_invalid_settings_are_rejected_naming_the_parameter(
    kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        RetryBudget(**kwargs)
    assert caught.value.field == field
