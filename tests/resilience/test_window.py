"""Sliding windows keep running totals; old outcomes leave the window as time or calls pass."""

from __future__ import annotations

import pytest

from shipyard import ConfigError
from shipyard.resilience.window import MAX_BUCKETS, CountWindow, TimeWindow, WindowSnapshot


def test_time_window_counts_calls_failures_and_slow_calls() -> None:
    window = TimeWindow(10.0)
    window.record(0.0, failed=False, slow=False)
    window.record(0.5, failed=True, slow=False)
    window.record(1.2, failed=True, slow=True)
    window.record(2.0, failed=False, slow=True)
    snap = window.snapshot(2.5)
    assert snap == WindowSnapshot(calls=4, failures=2, slow_calls=2)
    assert snap.failure_rate == 0.5
    assert snap.slow_call_rate == 0.5


def test_time_window_ages_out_outcomes_older_than_the_window() -> None:
    window = TimeWindow(10.0)
    window.record(0.2, failed=True, slow=True)
    window.record(5.0, failed=False, slow=False)
    assert window.snapshot(9.9).calls == 2
    assert window.snapshot(10.0) == WindowSnapshot(calls=1, failures=0, slow_calls=0)
    assert window.snapshot(15.0) == WindowSnapshot(calls=0, failures=0, slow_calls=0)


def test_time_window_forgets_everything_after_a_long_quiet_period() -> None:
    window = TimeWindow(3.0)
    for t in range(3):
        window.record(float(t), failed=True, slow=False)
    window.record(1000.0, failed=False, slow=False)
    assert window.snapshot(1000.0) == WindowSnapshot(calls=1, failures=0, slow_calls=0)


def test_record_success_reports_whether_anything_unhealthy_is_in_the_window() -> None:
    window = TimeWindow(2.0)
    assert window.record_success(0.0) == 0
    window.record(0.1, failed=True, slow=False)
    assert window.record_success(0.2) == 1
    assert window.record_success(5.0) == 0
    assert window.calls == 1


def test_long_time_windows_use_wider_buckets_not_more_of_them() -> None:
    window = TimeWindow(3600.0)
    assert window.width == 3600.0 / MAX_BUCKETS
    window.record(0.0, failed=True, slow=False)
    assert window.snapshot(3599.0).failures == 1
    assert window.snapshot(3600.0).failures == 0


def test_sub_second_time_window_has_one_bucket() -> None:
    window = TimeWindow(0.25)
    window.record(0.0, failed=True, slow=False)
    assert window.snapshot(0.2).calls == 1
    assert window.snapshot(0.25).calls == 0


def test_time_window_keeps_an_earlier_timestamp_in_the_newest_bucket() -> None:
    window = TimeWindow(5.0)
    window.record(3.0, failed=False, slow=False)
    window.record(2.0, failed=True, slow=False)
    assert window.snapshot(3.0) == WindowSnapshot(calls=2, failures=1, slow_calls=0)


def test_count_window_keeps_only_the_last_n_outcomes() -> None:
    window = CountWindow(3)
    window.record(0, failed=True, slow=True)
    window.record(0, failed=True, slow=False)
    window.record(0, failed=False, slow=False)
    assert window.snapshot(0) == WindowSnapshot(calls=3, failures=2, slow_calls=1)
    window.record(0, failed=False, slow=False)
    assert window.snapshot(0) == WindowSnapshot(calls=3, failures=1, slow_calls=0)
    window.record_success(0)
    window.record_success(0)
    assert window.snapshot(0) == WindowSnapshot(calls=3, failures=0, slow_calls=0)


def test_count_window_ignores_time() -> None:
    window = CountWindow(2)
    window.record(0.0, failed=True, slow=False)
    assert window.snapshot(1e9).failures == 1


@pytest.mark.parametrize("window", [TimeWindow(4.0), CountWindow(4)])
def test_reset_empties_a_window(window: TimeWindow | CountWindow) -> None:
    window.record(1.0, failed=True, slow=True)
    window.reset()
    assert window.snapshot(1.0) == WindowSnapshot(calls=0, failures=0, slow_calls=0)
    window.record(1.5, failed=False, slow=False)
    assert window.snapshot(1.5) == WindowSnapshot(calls=1, failures=0, slow_calls=0)


def test_empty_snapshot_has_zero_rates() -> None:
    snap = WindowSnapshot(0, 0, 0)
    assert (snap.failure_rate, snap.slow_call_rate) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: TimeWindow(0), "window"),
        (lambda: TimeWindow(1.0, buckets=0), "buckets"),
        (lambda: CountWindow(0), "window"),
        (lambda: CountWindow(2.5), "window"),  # type: ignore[arg-type]
    ],
)
def test_bad_window_sizes_raise_config_error(build: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()  # type: ignore[operator]
    assert info.value.field == field
