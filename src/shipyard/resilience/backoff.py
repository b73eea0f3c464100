"""Exponential backoff with jitter, as a pure function of its inputs.

The formulas are those of the AWS Architecture Blog post "Exponential Backoff And Jitter"
(Marc Brooker, 2015). The random source is a parameter, so tests pin it and property tests
check the bounds; nothing here reads a clock or keeps state.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from shipyard.core import ConfigError, validation

Jitter = Literal["full", "equal", "decorrelated"] | None
"""``None``: plain capped exponential; ``"full"``: uniform in [0, exp); ``"equal"``: half the
exponential plus a uniform half; ``"decorrelated"``: uniform in [base, 3 * previous)."""

JITTERS: tuple[Jitter, ...] = (None, "full", "equal", "decorrelated")

# AWS's decorrelated jitter grows the upper bound by a fixed factor of 3 per attempt,
# independent of ``multiplier`` (which only shapes the non-decorrelated curves).
DECORRELATED_GROWTH = 3.0


def exponential_delay(
    attempt: int, base_delay: float, multiplier: float, max_delay: float
) -> float:
    """``min(max_delay, base_delay * multiplier ** (attempt - 1))`` without float overflow."""
    try:
        delay = base_delay * multiplier ** (attempt - 1)
    except OverflowError:
        # Very late attempts: the exponential is astronomically large, so the cap applies.
        return max_delay
    return delay if delay < max_delay else max_delay


def backoff_delay(
    attempt: int,
    *,
    base_delay: float,
    multiplier: float,
    max_delay: float,
    jitter: Jitter,
    previous_delay: float | None,
    random: Callable[[], float],
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 = the first call failed).

    ``random()`` must return a float in [0, 1). ``previous_delay`` is the delay returned for
    the attempt before (``None`` on the first), used only by ``"decorrelated"``. The result
    always lies in [0, max_delay].
    """
    if jitter is None:
        return exponential_delay(attempt, base_delay, multiplier, max_delay)
    if jitter == "full":
        return random() * exponential_delay(attempt, base_delay, multiplier, max_delay)
    if jitter == "equal":
        half = exponential_delay(attempt, base_delay, multiplier, max_delay) / 2.0
        return half + random() * half
    # decorrelated: sleep = min(cap, random_between(base, previous * 3))
    previous = base_delay if previous_delay is None else max(previous_delay, base_delay)
    upper = previous * DECORRELATED_GROWTH
    delay = base_delay + random() * (upper - base_delay)
    return delay if delay < max_delay else max_delay


@dataclass(frozen=True, slots=True)
class Backoff:
    """Doubling delays with equal jitter, from ``base_delay`` up to ``max_delay`` seconds: the
    schedule of loops that retry until they succeed (outbox relays, bus consumers, saga
    steps without a retry policy of their own); the jitter keeps many of them from
    hammering a recovering server in lockstep. Build it with :meth:`checked`."""

    base_delay: float
    max_delay: float
    random: Callable[[], float] = _random.random

    @classmethod
    def checked(
        cls,
        base_field: str,
        base_delay: float,
        max_field: str,
        max_delay: float,
        random: Callable[[], float] = _random.random,
    ) -> Backoff:
        """Both delays validated as positive with ``max_delay >= base_delay``; a
        ``ConfigError`` names the caller's parameter (``base_field`` / ``max_field``)."""
        base = validation.positive(base_field, base_delay)
        cap = validation.positive(max_field, max_delay)
        if cap < base:
            raise ConfigError(max_field, max_delay, f"must be >= {base_field} ({base_delay})")
        return cls(base, cap, random)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 = the first)."""
        return backoff_delay(
            attempt,
            base_delay=self.base_delay,
            multiplier=2.0,
            max_delay=self.max_delay,
            jitter="equal",
            previous_delay=None,
            random=self.random,
        )
