"""Construction-time checks for configuration values.

Each check raises :class:`ConfigError` naming the parameter and the allowed range, so an
invalid setting fails where it is written rather than on the first call.
"""

from __future__ import annotations

import math

from shipyard.core.errors import ConfigError


def _require_number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(field, value, "must be a number")
    return float(value)


def positive(field: str, value: float) -> float:
    """``value`` must be a finite number > 0."""
    number = _require_number(field, value)
    if not (number > 0 and math.isfinite(number)):
        raise ConfigError(field, value, "must be a finite number > 0")
    return number


def non_negative(field: str, value: float) -> float:
    """``value`` must be a finite number >= 0."""
    number = _require_number(field, value)
    if not (number >= 0 and math.isfinite(number)):
        raise ConfigError(field, value, "must be a finite number >= 0")
    return number


def optional_positive(field: str, value: float | None) -> float | None:
    """``value`` must be ``None`` (disabled) or a finite number > 0."""
    return None if value is None else positive(field, value)


def fraction(field: str, value: float) -> float:
    """``value`` must lie in (0, 1] — a rate such as a failure-rate threshold."""
    number = _require_number(field, value)
    if not 0 < number <= 1:
        raise ConfigError(field, value, "must be in (0, 1], e.g. 0.5 for 50%")
    return number


def at_least(field: str, value: int, minimum: int) -> int:
    """``value`` must be an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, value, f"must be an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(field, value, f"must be an integer >= {minimum}")
    return value


def one_of(field: str, value: object, choices: tuple[object, ...]) -> object:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(field, value, f"must be one of {allowed}")
    return value
