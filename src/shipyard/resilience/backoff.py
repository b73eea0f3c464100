"""Exponential backoff with jitter, as a pure function of its inputs.

The formulas are those of the AWS Architecture Blog post "Exponential Backoff And Jitter"
(Marc Brooker, 2015). The random source is a parameter, so tests pin it and property tests
check the bounds; nothing here reads a clock or keeps state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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
