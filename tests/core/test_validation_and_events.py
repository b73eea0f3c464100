"""Invalid configuration names the field and the fix; listeners cannot break emitters."""

from __future__ import annotations

import math

import pytest

from shipyard import ConfigError, ShipyardError
from shipyard.core import EventPublisher, validation


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (validation.positive, 0),
        (validation.positive, -1.5),
        (validation.positive, math.inf),
        (validation.positive, "3"),
        (validation.positive, True),
        (validation.non_negative, -0.1),
        (validation.fraction, 0),
        (validation.fraction, 1.01),
        (validation.fraction, math.nan),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(check: object, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        check("reset_timeout", value)  # type: ignore[operator]
    assert info.value.field == "reset_timeout"
    assert "reset_timeout" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ShipyardError)


def test_good_values_pass_through_as_floats() -> None:
    assert validation.positive("x", 2) == 2.0
    assert validation.non_negative("x", 0) == 0.0
    assert validation.fraction("x", 1) == 1.0
    assert validation.optional_positive("x", None) is None


def test_at_least_and_one_of_describe_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match="integer >= 1"):
        validation.at_least("max_attempts", 0, 1)
    with pytest.raises(ConfigError, match="'full', 'equal'"):
        validation.one_of("jitter", "wild", ("full", "equal"))


def test_listener_failure_is_isolated_and_unsubscribe_works() -> None:
    publisher: EventPublisher[int] = EventPublisher("test")
    seen: list[int] = []

    def broken(_: int) -> None:
        raise RuntimeError("listener bug")

    publisher.subscribe(broken)
    unsubscribe = publisher.subscribe(seen.append)
    publisher.emit(1)
    unsubscribe()
    publisher.emit(2)
    assert seen == [1]
    assert publisher.has_listeners
