"""Passive outlier ejection, timed on a manual clock."""

from __future__ import annotations

import pytest

from shipyard.core import ConfigError, ManualClock
from shipyard.discovery import Instance, InstanceEjected, OutlierDetector

A, B, C, D = (Instance(f"i-{n}", "users", "10.0.0.1", 8000 + n) for n in range(4))
ALL = [A, B, C, D]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def detector(clock: ManualClock) -> OutlierDetector:
    detector = OutlierDetector(consecutive_failures=3, base_ejection=30.0, clock=clock)
    for instance in ALL:
        detector.record_success(instance)  # the detector has seen calls to all four
    return detector


def fail(detector: OutlierDetector, instance: Instance, times: int) -> None:
    for _ in range(times):
        detector.record_failure(instance)


def test_consecutive_failures_eject_the_instance_for_the_base_ejection(
    detector: OutlierDetector, clock: ManualClock
) -> None:
    fail(detector, A, 2)
    assert detector.filter(ALL) == ALL

    fail(detector, A, 1)
    assert detector.filter(ALL) == [B, C, D]

    clock.advance(29.9)
    assert detector.is_ejected(A)
    clock.advance(0.1)
    assert detector.filter(ALL) == ALL


def test_a_success_resets_the_failure_streak(detector: OutlierDetector) -> None:
    fail(detector, A, 2)
    detector.record_success(A)
    fail(detector, A, 2)

    assert not detector.is_ejected(A)


def test_one_refused_connection_ejects_at_once(detector: OutlierDetector) -> None:
    detector.record_failure(B, connection_refused=True)

    assert detector.filter(ALL) == [A, C, D]


def test_repeated_ejections_last_longer_each_time(
    detector: OutlierDetector, clock: ManualClock
) -> None:
    fail(detector, A, 3)
    clock.advance(30.0)
    fail(detector, A, 3)  # straight back out: second ejection

    clock.advance(59.9)
    assert detector.is_ejected(A)
    clock.advance(0.1)
    assert not detector.is_ejected(A)


def test_ejection_time_is_forgiven_after_staying_healthy(
    detector: OutlierDetector, clock: ManualClock
) -> None:
    fail(detector, A, 3)
    clock.advance(30.0)
    clock.advance(30.0)  # one base_ejection healthy forgives the earlier ejection
    fail(detector, A, 3)

    clock.advance(30.0)
    assert not detector.is_ejected(A)


def test_ejection_time_is_capped_by_max_ejection(clock: ManualClock) -> None:
    detector = OutlierDetector(
        consecutive_failures=1, base_ejection=10.0, max_ejection=25.0, clock=clock
    )
    for _ in range(5):
        detector.record_failure(A)
        clock.advance(25.0)
        assert not detector.is_ejected(A)


def test_at_most_max_ejection_percent_of_instances_are_ejected(
    detector: OutlierDetector,
) -> None:
    for instance in ALL:
        detector.record_failure(instance, connection_refused=True)

    # 50% of four instances: the first two are ejected, the rest stay in rotation.
    assert detector.filter(ALL) == [C, D]


def test_filter_returns_every_instance_rather_than_none(detector: OutlierDetector) -> None:
    detector.record_failure(A, connection_refused=True)

    assert detector.filter([A]) == [A]


def test_a_lone_instance_can_still_be_ejected(clock: ManualClock) -> None:
    detector = OutlierDetector(consecutive_failures=1, clock=clock)

    detector.record_failure(A)

    assert detector.is_ejected(A)


def test_ejections_are_published_as_events(detector: OutlierDetector) -> None:
    seen: list[InstanceEjected] = []
    detector.events.subscribe(seen.append)

    detector.record_failure(C, connection_refused=True)

    assert seen == [InstanceEjected("i-2", "users", 30.0, 1, "connection refused")]


def test_settings_are_validated_at_construction() -> None:
    with pytest.raises(ConfigError, match="consecutive_failures"):
        OutlierDetector(consecutive_failures=0)
    with pytest.raises(ConfigError, match="base_ejection"):
        OutlierDetector(base_ejection=0)
    with pytest.raises(ConfigError, match="max_ejection_percent"):
        OutlierDetector(max_ejection_percent=1.5)
